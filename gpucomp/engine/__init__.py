"""The compositing engine: backends (cpu, the GPU engine and its simulation),
the kernel build, the frame cache, and the pipeline that overlaps the stages."""
