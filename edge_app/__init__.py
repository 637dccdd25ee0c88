"""edge-app: image classification on Raspberry Pi with TFLite MobileNet V1 and XNNPACK."""

__version__ = "0.1.0"
