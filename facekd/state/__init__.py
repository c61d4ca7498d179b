"""A workspace's state: ``workspace`` (open / init / close, the meta keys, the commits), ``config``
(``config.toml``) and ``receipt`` (receipts and identity hashes). Below the operations."""
