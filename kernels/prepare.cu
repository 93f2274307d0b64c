/* Model-input kernels: crops in VRAM -> visual [B, 6, 320, 320], features ->
 * audio [B, 32, 16, 16]. grid.y is the frame of the batch. */
#include "prepare.cuh"

extern "C" __global__ void gc_prepare_visual(const gc_u8 *__restrict__ crops, const gc_frame *__restrict__ frames,
                                             float *__restrict__ visual, int first)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= GC_ROI * GC_ROI)
        return;
    int b = blockIdx.y;
    gc_i64 slot = frames[first + b].slot;
    gc_visual_pixel(crops + slot * (GC_CROP * GC_CROP * 3), visual + (gc_i64)b * 6 * GC_ROI * GC_ROI,
                    i / GC_ROI, i % GC_ROI);
}

extern "C" __global__ void gc_prepare_audio(const float *__restrict__ features, int rows,
                                            float *__restrict__ audio, int first_index)
{
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= GC_AUDIO_WINDOW * GC_FEATURE_DIM)
        return;
    int b = blockIdx.y;
    audio[(gc_i64)b * GC_AUDIO_WINDOW * GC_FEATURE_DIM + e] = gc_audio_value(features, rows, first_index + b, e);
}
