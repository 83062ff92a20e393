# cython: cdivision=True
# Declarations of the Cython kernels (cy_kernels.pyx) for cy_train.pyx, and the elementwise helpers,
# inlined wherever they are used. Twin of the first part of nb_kernels.py. C division, as in the
# .pyx files: a zero-division check (Python's exception) would keep loops over these scalar.
from cython cimport floating
from libc.math cimport exp, fabs, floorf, log1p, sqrt, sqrtf, tanh
from libc.stdint cimport int32_t, int64_t, uint64_t

include "cy_codes.pxi"


cdef extern from *:
    """
    /* c + a b as one fused multiply-add where the target has them (as LLVM, in the Numba twin, keeps
     * a chain of multiply-adds): gcc's fast-math reassociation turns a sum of products into a tree
     * of separate multiplies and adds, and leaves fused ones alone. Without FMA: a * b + c. */
    #if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    #define fbp_fma(a, b, c) __builtin_fma(a, b, c)
    #define fbp_fmaf(a, b, c) __builtin_fmaf(a, b, c)
    #else
    #define fbp_fma(a, b, c) ((a) * (b) + (c))
    #define fbp_fmaf(a, b, c) ((a) * (b) + (c))
    #endif
    """
    double _fma64 "fbp_fma"(double a, double b, double c) noexcept nogil
    float _fma32 "fbp_fmaf"(float a, float b, float c) noexcept nogil


cdef inline floating _fma(floating a, floating b, floating c) noexcept nogil:
    """c + a b, one multiply-add (see fbp_fma above). Numba's twin writes c + a * b."""
    if floating is float:
        return _fma32(a, b, c)
    else:
        return _fma64(a, b, c)


cdef inline bint _finite(double x) noexcept nogil:
    """x is neither NaN nor infinite, as a comparison (fast-math may fold isfinite away).
    Twin: nb_kernels._finite."""
    return fabs(x) <= 1.7976931348623157e308


cdef inline floating _sqrt(floating x) noexcept nogil:
    """The square root in x's own type: sqrtf for float (libc's sqrt would compute in double, and
    the conversions keep gcc from vectorizing the loop). Numba's math.sqrt is already of its
    argument's type, so this has no twin."""
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline double _activate(int code, double z) noexcept nogil:
    """f(z) in double for an elementwise activation code. Twin: nb_kernels._activate."""
    if code == SIGMOID:
        return 1.0 / (1.0 + exp(-z))
    if code == TANH:
        return tanh(z)
    if code == RELU:
        return z if z > 0.0 else 0.0
    if code == LEAKY_RELU:
        return z if z > 0.0 else LEAKY_SLOPE * z
    return z


cdef union _Float32Bits:  # a float32 read from its bit pattern (2^k for _exp32)
    float value
    int32_t bits


cdef inline float _exp32(float x) noexcept nogil:
    """e^x in float32 with no library call, so that a loop over it vectorizes: 2^k e^r with
    k = round(x / ln 2), |r| <= ln(2) / 2 and Cephes' expf polynomial (at most 1 ulp from e^x on
    [-87, 88], measured; r in float32 would lose up to 60 ulp once gcc reassociates); x is clamped
    to [-87, 88] (e^x stays normal and finite), NaN stays NaN. Twin: nb_kernels._exp32."""
    cdef float k, r, p
    cdef int32_t ki
    cdef _Float32Bits scale
    if x > <float>88.0:
        x = 88.0
    if x < <float>-87.0:
        x = -87.0
    k = floorf(x * <float>1.44269504088896341 + <float>0.5)
    if k != k:  # NaN: r and p carry it; k must still convert to an integer
        k = 0
    ki = <int32_t>k
    r = <float>(<double>x - <double>k * 0.6931471805599453)  # in double: exact enough in any order
    p = <float>1.9875691500e-4
    p = p * r + <float>1.3981999507e-3
    p = p * r + <float>8.3334519073e-3
    p = p * r + <float>4.1665795894e-2
    p = p * r + <float>1.6666665459e-1
    p = p * r + <float>5.0000001201e-1
    p = p * r * r + r + <float>1.0
    scale.bits = (ki + 127) << 23
    return p * scale.value


cdef inline float _sigmoid32(float z) noexcept nogil:
    """The sigmoid of float32 networks' forward tiles (vectorizable: _exp32). Twin: nb_kernels._sigmoid32."""
    return <float>1.0 / (<float>1.0 + _exp32(-z))


cdef inline float _log1p32(float x) noexcept nogil:
    """log(1 + x) for x in [0, 1] in float32 with no library call (vectorizable): 2 atanh(s) with
    s = x / (2 + x) <= 1/3, its series to s^17 (the next term is under 2e-10; at most 1.6 ulp from
    log1p(e^-|z|), measured). No cancellation for fast-math to undo, as log(1 + x) with a correction
    term would have (gcc folds (1 + x) - 1 to x). Twin: nb_kernels._log1p32."""
    cdef float s = x / (<float>2.0 + x)
    cdef float t = s * s
    cdef float p = <float>(1.0 / 17.0)
    p = p * t + <float>(1.0 / 15.0)
    p = p * t + <float>(1.0 / 13.0)
    p = p * t + <float>(1.0 / 11.0)
    p = p * t + <float>(1.0 / 9.0)
    p = p * t + <float>(1.0 / 7.0)
    p = p * t + <float>(1.0 / 5.0)
    p = p * t + <float>(1.0 / 3.0)
    return <float>2.0 * s + <float>2.0 * s * t * p


cdef inline double _derivative(int code, double a) noexcept nogil:
    """f'(z) written on a = f(z), in double. Twin: nb_kernels._derivative."""
    if code == SIGMOID:
        return a * (1.0 - a)
    if code == TANH:
        return 1.0 - a * a
    if code == RELU:
        return 1.0 if a > 0.0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if a > 0.0 else LEAKY_SLOPE
    return 1.0


cdef inline double _softplus(double x) noexcept nogil:
    """log(1 + e^x) without overflow. Twin: nb_kernels._softplus."""
    return log1p(exp(-fabs(x))) + (x if x > 0.0 else 0.0)


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    """splitmix64's finalizer. Twin: nb_kernels._mix."""
    x = (x ^ (x >> 30)) * MIX_1
    x = (x ^ (x >> 27)) * MIX_2
    return x ^ (x >> 31)


cdef inline bint _keep(double seed, double key, Py_ssize_t layer, Py_ssize_t sample, Py_ssize_t unit,
                       double rate) noexcept nogil:
    """Whether dropout keeps this unit: the hash of codes.dropout_keep. Twin: nb_kernels._keep."""
    cdef uint64_t x = _mix(<uint64_t>seed + GOLDEN * (<uint64_t>key + 1))
    x = _mix(x + GOLDEN * (<uint64_t>layer * <uint64_t>4294967296 + <uint64_t>unit + 1))
    x = _mix(x + GOLDEN * (<uint64_t>sample + 1))
    return <double>(x >> 11) * 1.1102230246251565e-16 >= rate


cdef void _dropout_rows(floating* Z, Py_ssize_t n, double rate, double seed, double key,
                        Py_ssize_t layer, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t j0,
                        Py_ssize_t j1) noexcept nogil

cdef void _derivative_block(const floating* A, int act, floating* E, Py_ssize_t n, Py_ssize_t s0,
                            Py_ssize_t s1, Py_ssize_t i0, Py_ssize_t i1, double rate, double seed,
                            double key, Py_ssize_t layer) noexcept nogil

cdef void _gemm(char transa, char transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
                floating* C, Py_ssize_t ldc) noexcept nogil

cdef void _bias_activate(floating* Z, Py_ssize_t n, const floating* b, int act, Py_ssize_t s0,
                         Py_ssize_t s1, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil

cdef double _softmax_row(floating* z, Py_ssize_t k) noexcept nogil

cdef void _forward_rows(const floating* W, const floating* b, const floating* A, const int64_t* rows,
                        Py_ssize_t m, Py_ssize_t n_in, Py_ssize_t n_out, int act, floating* Z,
                        Py_ssize_t j0, Py_ssize_t j1) noexcept nogil

cdef void _backward_block(const floating* W, const floating* D, const floating* A, int act,
                          floating* E, Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t s0,
                          Py_ssize_t s1, Py_ssize_t i0, Py_ssize_t i1, double rate, double seed,
                          double key, Py_ssize_t layer) noexcept nogil

cdef void _gradient_rows(const floating* D, const floating* A, const int64_t* rows, Py_ssize_t m,
                         Py_ssize_t n_in, Py_ssize_t n_out, floating scale, floating* G,
                         floating* gb, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil

cdef void _sparse_forward_rows(const floating* W, const floating* b, const int64_t* indptr,
                               const int64_t* indices, const floating* data, const int64_t* rows,
                               Py_ssize_t m, Py_ssize_t n_in, Py_ssize_t n_out, int act,
                               floating* Z, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil

cdef void _sparse_gradient_rows(const floating* D, const int64_t* indptr, const int64_t* indices,
                                const floating* data, const int64_t* rows, Py_ssize_t m,
                                Py_ssize_t n_in, Py_ssize_t n_out, floating scale, floating* G,
                                floating* gb, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil

cdef void _row_squares(const floating* G, Py_ssize_t n, double* squares, Py_ssize_t j0,
                       Py_ssize_t j1) noexcept nogil

cdef floating _update_range(int opt, floating* P, const floating* G, floating* S0, floating* S1,
                            const floating* c, floating l2, Py_ssize_t lo,
                            Py_ssize_t hi) noexcept nogil

cdef void _coefficients(int opt, double* hyper, Py_ssize_t m, floating* c) noexcept nogil

cdef void _activation_forward(int act, floating* Z, Py_ssize_t m, Py_ssize_t n) noexcept nogil

cdef void _output_error(int act, int loss, floating* Z, const floating* Y, const int64_t* rows,
                        Py_ssize_t m, Py_ssize_t k, floating* D, double* cost) noexcept nogil
