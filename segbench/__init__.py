"""segbench: which segmentation architecture, at what cost?"""

__version__ = "0.1.0"
