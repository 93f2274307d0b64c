"""gpucomp: GPU-resident compositing of lip-sync predictions into full-body video.

Importing gpucomp never touches a GPU: device availability is decided when a
backend is created.
"""

import os

# FFmpeg inside OpenCV logs every decoding hiccup to stderr; errors are reported
# by gpucomp itself, once, naming the file and frame. Must precede `import cv2`.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"
