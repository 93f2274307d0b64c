/* Shared definitions for the gpucomp kernels, valid C11 and CUDA C++.
 *
 * Every per-element function is written once, marked GC_HD, and compiled both
 * for the device (NVRTC through cupy.RawModule, or nvcc) and for the host (the
 * gpu-sim backend's shared library). Only builtin types are used: NVRTC has no
 * standard headers.
 */
#ifndef GPUCOMP_COMMON_CUH
#define GPUCOMP_COMMON_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GC_HD __host__ __device__ __forceinline__
#define GC_ON_DEVICE 1
#define GC_UNROLL _Pragma("unroll")
#else
#include <math.h>
#include <string.h>
#define GC_HD static inline
#define GC_UNROLL
#endif

typedef unsigned char gc_u8;
typedef long long gc_i64;

/* Geometry of PIPELINE.md (mirrors gpucomp/core/contract.py). */
#define GC_CROP 328
#define GC_ROI 320
#define GC_ROI_OFFSET 4
#define GC_MASK_X0 5   /* masked: x in [5, 314], y in [5, 309], inclusive */
#define GC_MASK_X1 314
#define GC_MASK_Y0 5
#define GC_MASK_Y1 309
#define GC_ALPHA_ONE 256

/* One destination index of a cv2-exact bilinear table
 * (gpucomp.core.contract.axis_table): two source indices and their weights /2048. */
typedef struct {
    int s0, s1, c0, c1;
} gc_tap;

/* One frame of a batch: where its cached pixels lie, where its output goes,
 * and where its face lands (gpucomp.core.contract.Placement). Each frame
 * carries its own pointers, size and feather, so one launch may mix avatars
 * of any frame size, each cached in its own allocation, and renders of any
 * feather. 88 bytes; mirrored by
 * gpucomp.engine.kernel_layout.FRAME_DTYPE. */
typedef struct {
    const gc_u8 *full;      /* the cached full-body frame, height * width * 3 bytes */
    const gc_u8 *crop;      /* its cached 328x328x3 crop */
    gc_u8 *out;             /* where the composited frame goes */
    const gc_tap *taps;     /* the bilinear tables of its avatar */
    gc_i64 frame_bytes;     /* height * width * 3, below 2^31 */
    int width;
    int x1, y1, x2, y2;     /* rectangle, exclusive ends; the face is resized to it */
    int vx1, vy1, vx2, vy2; /* the part inside the frame; empty when vx2 <= vx1 */
    int xtab, ytab;         /* first tap of the x and y tables for this size, in `taps` */
    int feather;            /* blend the face edge over this many pixels; 0: the exact contract */
} gc_frame;

#endif
