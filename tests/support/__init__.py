"""What the tests share: synthetic DICOM, polling, helpers over ``sendit.naming`` and ``sendit.store``."""
