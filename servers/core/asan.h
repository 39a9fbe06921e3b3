/* asan: whether this build runs under AddressSanitizer. CORE_ASAN is 1
 * when it does (GCC says so with __SANITIZE_ADDRESS__, clang with
 * __has_feature), and then ASan's interface is included: code that moves
 * a thread onto another stack (coro.c's switches, the sandbox's own stack)
 * must tell it of every switch, and code that measures the allocator must
 * know its memory is ASan's. */
#ifndef CORE_ASAN_H
#define CORE_ASAN_H

#if defined(__SANITIZE_ADDRESS__)
#define CORE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CORE_ASAN 1
#endif
#endif

#ifdef CORE_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#endif
