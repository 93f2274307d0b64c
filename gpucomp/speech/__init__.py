"""Speech to model input: the mel front end, audio features through the audio
encoder, and the schedule of avatar frames and feature windows."""
