"""ONNX graph surgery (``graph``) and execution-provider choice (``providers``); no encoder here."""
