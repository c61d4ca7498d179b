"""The math core: numpy/scipy only, nothing above it (docs/architecture.md).

``tail`` (the gated scramble's stages), ``erasure`` (the :class:`Erasure` object), ``metrics``
(the measurements), ``verdict`` (verify's statistics and rulings), ``separation`` (whether an
encoder tells people apart).
"""
