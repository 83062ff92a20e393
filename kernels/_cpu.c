/* fastbp.kernels._cpu: which instruction-set extensions this CPU has, and the operating system
 * enables, read with cpuid (and xgetbv for the AVX and AVX-512 register state).
 *
 * kernels/loader.py picks the build of the Cython kernels this machine can run from these names; a
 * distributable build (setup.py, FASTBP_ARCH=dist) compiles this module without any -march flag, so
 * that it runs on every x86-64 CPU. Names: sse3 ssse3 sse4.1 sse4.2 popcnt cx16 lahf (x86-64-v2);
 * avx avx2 fma bmi1 bmi2 f16c lzcnt movbe (x86-64-v3); avx512f avx512bw avx512cd avx512dq avx512vl
 * (x86-64-v4). features() returns None on other processors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(__x86_64__) || defined(_M_X64) || defined(_M_AMD64)
#define FBP_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
static void fbp_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
    int x[4];
    __cpuidex(x, (int)leaf, (int)sub);
    r[0] = (unsigned)x[0]; r[1] = (unsigned)x[1]; r[2] = (unsigned)x[2]; r[3] = (unsigned)x[3];
}
static unsigned long long fbp_xgetbv(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
static void fbp_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static unsigned long long fbp_xgetbv(void) {
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif
#endif

#define BIT(word, n) (((word) >> (n)) & 1u)

static int add(PyObject *list, int present, const char *name) {
    if (!present) return 0;
    PyObject *s = PyUnicode_FromString(name);
    if (s == NULL) return -1;
    int status = PyList_Append(list, s);
    Py_DECREF(s);
    return status;
}

static PyObject *features(PyObject *self, PyObject *unused) {
#ifdef FBP_X86
    unsigned r[4] = {0, 0, 0, 0}, max_leaf, max_ext, ecx1, edx1, ebx7 = 0, ecx81 = 0;
    unsigned long long xcr0 = 0;
    fbp_cpuid(0, 0, r);
    max_leaf = r[0];
    fbp_cpuid(1, 0, r);
    ecx1 = r[2]; edx1 = r[3];
    (void)edx1;
    if (max_leaf >= 7) {
        fbp_cpuid(7, 0, r);
        ebx7 = r[1];
    }
    fbp_cpuid(0x80000000u, 0, r);
    max_ext = r[0];
    if (max_ext >= 0x80000001u) {
        fbp_cpuid(0x80000001u, 0, r);
        ecx81 = r[2];
    }
    if (BIT(ecx1, 27)) xcr0 = fbp_xgetbv();  /* OSXSAVE: the OS saves the extended registers */
    int ymm = (xcr0 & 0x6) == 0x6;           /* XMM and YMM state */
    int zmm = ymm && (xcr0 & 0xe0) == 0xe0;  /* opmask, ZMM_Hi256, Hi16_ZMM state */
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    if (add(list, BIT(ecx1, 0), "sse3") || add(list, BIT(ecx1, 9), "ssse3")
        || add(list, BIT(ecx1, 19), "sse4.1") || add(list, BIT(ecx1, 20), "sse4.2")
        || add(list, BIT(ecx1, 23), "popcnt") || add(list, BIT(ecx1, 13), "cx16")
        || add(list, BIT(ecx81, 0), "lahf")
        || add(list, ymm && BIT(ecx1, 28), "avx") || add(list, ymm && BIT(ebx7, 5), "avx2")
        || add(list, ymm && BIT(ecx1, 12), "fma") || add(list, BIT(ebx7, 3), "bmi1")
        || add(list, BIT(ebx7, 8), "bmi2") || add(list, ymm && BIT(ecx1, 29), "f16c")
        || add(list, BIT(ecx81, 5), "lzcnt") || add(list, BIT(ecx1, 22), "movbe")
        || add(list, zmm && BIT(ebx7, 16), "avx512f") || add(list, zmm && BIT(ebx7, 30), "avx512bw")
        || add(list, zmm && BIT(ebx7, 28), "avx512cd") || add(list, zmm && BIT(ebx7, 17), "avx512dq")
        || add(list, zmm && BIT(ebx7, 31), "avx512vl")) {
        Py_DECREF(list);
        return NULL;
    }
    PyObject *result = PyList_AsTuple(list);
    Py_DECREF(list);
    return result;
#else
    Py_RETURN_NONE;
#endif
}

static PyMethodDef methods[] = {
    {"features", features, METH_NOARGS,
     "features()\n--\n\nThe instruction-set extensions of this CPU that the OS enables, as a tuple of "
     "names (None on processors other than x86-64)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu", "The CPU's instruction-set extensions, read with cpuid.", -1, methods,
};

PyMODINIT_FUNC PyInit__cpu(void) { return PyModule_Create(&module); }
