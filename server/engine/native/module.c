/* The library's one non-kernel file: what makes the kernels a setuptools extension module, and
 * the digest of the sources it was built from.
 *
 * setuptools builds C into a package at install time (`pip install -e .`, setup.py) only as an
 * extension module, which must export PyInit_<name>. Python never imports this module: it loads
 * the built file with ctypes by its path (server.engine.native_ops), so the stub below is never
 * called, and no Python.h is needed (no CPython API is used). Importing it by mistake fails with
 * a SystemError, as a module whose init returns NULL without an exception does. */
#ifndef GLL_SOURCE_DIGEST
#error "build with -DGLL_SOURCE_DIGEST (setup.py computes it)"
#endif

void *PyInit__native_bf16(void);
void *PyInit__native_bf16(void) { return 0; }

/* SHA-256 (hex) of the .c and .h files of native/ as they were built: server.engine.native_ops compares it
 * with the sources beside the library, so an editable install whose C changed since the build
 * is reported (rebuild: `make native`) instead of running stale code. */
const char *gll_source_digest(void);
const char *gll_source_digest(void) { return GLL_SOURCE_DIGEST; }
