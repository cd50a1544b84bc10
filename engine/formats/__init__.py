"""The engine's ciphertext formats, apart from the primitives that seal them.

- :mod:`engine.formats.wire`: the binary and text token layout, format numbers, headers, and the
  errors of every format;
- :mod:`engine.formats.envelope`: the JSON envelope, one value at a time (``EncryptedData``);
- :mod:`engine.formats.json_extras`: the application's own members kept in a JSON envelope;
- :mod:`engine.formats.tokens`: tokens in bulk (headers, packing, parsing, text forms);
- :mod:`engine.formats.stored`: stored values of any kind in bulk (tokens or JSON envelopes,
  NULLs), read into binary tokens and written back in their own kind.
"""
