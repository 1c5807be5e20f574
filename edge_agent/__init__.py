"""The edge agent: a small MQTT + ONNX Runtime daemon for devices. Never imports mesh."""
