"""Small utilities shared by every stage; none of them imports another part of mimir.

- :mod:`~mimir.utils.atomic`: atomic writes (temporary file, fsync, rename);
- :mod:`~mimir.utils.hashing`: sha256 of files, streamed;
- :mod:`~mimir.utils.paths`: ``MIMIR_HOME``, the module and cache folders;
- :mod:`~mimir.utils.memory`: keeping freed memory for reuse in batch workers;
- :mod:`~mimir.utils.devices`: ``--device`` / ``--gpu`` / ``--precision`` to torch devices;
- :mod:`~mimir.utils.lazy`: lazy re-exports for package ``__init__`` files.
"""
