"""sendit: serverless de-identification and delivery of DICOM studies on Google Cloud."""

__version__ = "0.1.0"
