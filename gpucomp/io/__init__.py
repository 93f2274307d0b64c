"""Files in and out: datasets and avatar folders, video decoding and writing,
audio files, frame encoders and sinks, atomic writes, the resume record,
`prepare`, and the synthetic demo data."""
