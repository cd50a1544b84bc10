// A Node.js peer that writes and reads the JSON envelope as a TypeScript service does: AES-256-GCM, 16-byte IV, 16-byte tag,
// JSON {iv, ciphertext, authTag, keyVersion, timestamp, algorithm}, base64 fields, AAD = caller's.
// Standard library only.
//   node interop.js encrypt <key-hex> <key-version> [aad]   plaintext (base64) on stdin -> JSON
//   node interop.js decrypt <key-hex> [aad]                  JSON on stdin -> plaintext (base64)
'use strict';
const crypto = require('crypto');

function readStdin() {
  return require('fs').readFileSync(0, 'utf8').trim();
}

function encrypt(key, keyVersion, plaintext, aad) {
  const iv = crypto.randomBytes(16);
  const cipher = crypto.createCipheriv('aes-256-gcm', key, iv);
  if (aad !== undefined) cipher.setAAD(Buffer.from(aad, 'utf8'));
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return {
    iv: iv.toString('base64'),
    ciphertext: ciphertext.toString('base64'),
    authTag: cipher.getAuthTag().toString('base64'),
    keyVersion,
    timestamp: new Date().toISOString(),
    algorithm: 'aes-256-gcm',
  };
}

function decrypt(key, encrypted, aad) {
  const decipher = crypto.createDecipheriv('aes-256-gcm', key, Buffer.from(encrypted.iv, 'base64'));
  if (aad !== undefined) decipher.setAAD(Buffer.from(aad, 'utf8'));
  decipher.setAuthTag(Buffer.from(encrypted.authTag, 'base64'));
  return Buffer.concat([decipher.update(Buffer.from(encrypted.ciphertext, 'base64')), decipher.final()]);
}

const [mode, keyHex, ...rest] = process.argv.slice(2);
const key = Buffer.from(keyHex, 'hex');
if (mode === 'encrypt') {
  const [version, aad] = rest;
  const plaintext = Buffer.from(readStdin(), 'base64');
  process.stdout.write(JSON.stringify(encrypt(key, Number(version), plaintext, aad)));
} else if (mode === 'decrypt') {
  const [aad] = rest;
  try {
    process.stdout.write(decrypt(key, JSON.parse(readStdin()), aad).toString('base64'));
  } catch (err) {
    process.stderr.write('decrypt failed: ' + err.message);
    process.exit(2);
  }
} else {
  process.stderr.write('usage: interop.js encrypt|decrypt <key-hex> ...');
  process.exit(1);
}
