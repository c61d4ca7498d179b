"""``facekd bench`` and the HTML report: the shells that measure methods and encoders."""
