"""Face rectangles from a plain video, for `prepare --detect`: a face detector
and landmark model run on every frame (landmarks.py), the landmarks turned
into the rectangle UNet-328 models are trained on (rectangle.py), the
rectangles smoothed over time (smooth.py), and the video streamed through all
three (detect.py)."""
