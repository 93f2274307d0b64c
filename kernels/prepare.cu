/* The visual-input kernel: each batch frame's cached crop -> visual [B, 6, 320, 320].
 * grid.y is the frame of the batch. (The audio input is the 16 feature rows of
 * the frame's window, copied as they are.) */
#include "prepare.cuh"

extern "C" __global__ void gc_prepare_visual(const gc_frame *__restrict__ frames, float *__restrict__ visual)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= GC_ROI * GC_ROI)
        return;
    int b = blockIdx.y;
    gc_visual_pixel(frames[b].crop, visual + (gc_i64)b * 6 * GC_ROI * GC_ROI, i / GC_ROI, i % GC_ROI);
}
