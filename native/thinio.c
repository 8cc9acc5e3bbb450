/*
 * thinio: the few Linux system calls Node does not expose, for sources and targets.
 *   seekData/seekHole (lseek SEEK_DATA/SEEK_HOLE), punchHole/zeroRange (fallocate),
 *   blkDiscard/blkZeroOut/blkGetSize64 (block device ioctls), flockExclusive/flockUnlock (flock(2):
 *   the target lock, released by the kernel when its holder dies), mallocTrim (glibc's malloc_trim:
 *   freed heap memory back to the system) and mallocMmapThreshold (mallopt(M_MMAP_THRESHOLD)), for a
 *   long-running daemon.
 * All but the last two take a file descriptor and byte offsets/lengths as JS numbers and are synchronous.
 * Errors are thrown as Error objects whose `code` is the errno name (EOPNOTSUPP, ENXIO, ...).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <node_api.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  const char *name = strerrorname_np(err);
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, name ? name : "EIO", msg);
  return NULL;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, int64_t *out) {
  napi_value argv[3];
  size_t argc = 3;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, "EINVAL", "wrong number of arguments");
    return 0;
  }
  for (size_t i = 0; i < want; i++) {
    double d;
    if (napi_get_value_double(env, argv[i], &d) != napi_ok || d < 0 || d > 9007199254740991.0) {
      napi_throw_type_error(env, "EINVAL", "arguments must be non-negative safe integers");
      return 0;
    }
    out[i] = (int64_t)d;
  }
  return 1;
}

static napi_value num(napi_env env, int64_t v) {
  napi_value r;
  napi_create_double(env, (double)v, &r);
  return r;
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence, const char *what) {
  int64_t a[2];
  if (!get_args(env, info, 2, a)) return NULL;
  off_t r = lseek((int)a[0], (off_t)a[1], whence);
  if (r < 0) {
    if (errno == ENXIO) return num(env, -1); /* no more data (SEEK_DATA) or offset past end */
    return throw_errno(env, what, errno);
  }
  return num(env, r);
}

static napi_value seek_data(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)"); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)"); }

static napi_value do_fallocate(napi_env env, napi_callback_info info, int mode, const char *what) {
  int64_t a[3];
  if (!get_args(env, info, 3, a)) return NULL;
  if (a[2] == 0) return NULL;
  if (fallocate((int)a[0], mode, (off_t)a[1], (off_t)a[2]) < 0) return throw_errno(env, what, errno);
  return NULL;
}

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return do_fallocate(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "fallocate(PUNCH_HOLE)");
}
static napi_value zero_range(napi_env env, napi_callback_info info) {
  return do_fallocate(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "fallocate(ZERO_RANGE)");
}

static napi_value do_range_ioctl(napi_env env, napi_callback_info info, unsigned long req, const char *what) {
  int64_t a[3];
  if (!get_args(env, info, 3, a)) return NULL;
  if (a[2] == 0) return NULL;
  uint64_t range[2] = {(uint64_t)a[1], (uint64_t)a[2]};
  if (ioctl((int)a[0], req, range) < 0) return throw_errno(env, what, errno);
  return NULL;
}

static napi_value blk_discard(napi_env env, napi_callback_info info) { return do_range_ioctl(env, info, BLKDISCARD, "ioctl(BLKDISCARD)"); }
static napi_value blk_zeroout(napi_env env, napi_callback_info info) { return do_range_ioctl(env, info, BLKZEROOUT, "ioctl(BLKZEROOUT)"); }

static napi_value blk_getsize64(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (!get_args(env, info, 1, a)) return NULL;
  uint64_t size = 0;
  if (ioctl((int)a[0], BLKGETSIZE64, &size) < 0) return throw_errno(env, "ioctl(BLKGETSIZE64)", errno);
  return num(env, (int64_t)size);
}

/* flockExclusive(fd): flock(LOCK_EX | LOCK_NB). true: now held; false: another open file holds it. */
static napi_value flock_exclusive(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (!get_args(env, info, 1, a)) return NULL;
  int r;
  do r = flock((int)a[0], LOCK_EX | LOCK_NB); while (r < 0 && errno == EINTR);
  napi_value b;
  if (r < 0) {
    if (errno != EWOULDBLOCK) return throw_errno(env, "flock(LOCK_EX)", errno);
    napi_get_boolean(env, false, &b);
    return b;
  }
  napi_get_boolean(env, true, &b);
  return b;
}

static napi_value flock_unlock(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (!get_args(env, info, 1, a)) return NULL;
  if (flock((int)a[0], LOCK_UN) < 0) return throw_errno(env, "flock(LOCK_UN)", errno);
  return NULL;
}

/* mallocTrim(): malloc_trim(0) where the C library is glibc: free pages of every arena go back to the
 * system (madvise), not only the top of the heap. true when memory was released. */
static napi_value malloc_trim0(napi_env env, napi_callback_info info) {
  (void)info;
  int r = 0;
#ifdef __GLIBC__
  r = malloc_trim(0);
#endif
  napi_value b;
  napi_get_boolean(env, r != 0, &b);
  return b;
}

/* mallocMmapThreshold(bytes): mallopt(M_MMAP_THRESHOLD, bytes) where the C library is glibc: blocks
 * at least this large are mapped on their own and unmapped when freed (a fixed threshold also stops
 * glibc from raising it after such frees). true when set. */
static napi_value malloc_mmap_threshold(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (!get_args(env, info, 1, a)) return NULL;
  int r = 0;
#ifdef __GLIBC__
  if (a[0] <= 0x7fffffff) r = mallopt(M_MMAP_THRESHOLD, (int)a[0]);
#endif
  napi_value b;
  napi_get_boolean(env, r != 0, &b);
  return b;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_default, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_default, NULL},
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_default, NULL},
    {"zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_default, NULL},
    {"blkDiscard", NULL, blk_discard, NULL, NULL, NULL, napi_default, NULL},
    {"blkZeroOut", NULL, blk_zeroout, NULL, NULL, NULL, napi_default, NULL},
    {"blkGetSize64", NULL, blk_getsize64, NULL, NULL, NULL, napi_default, NULL},
    {"flockExclusive", NULL, flock_exclusive, NULL, NULL, NULL, napi_default, NULL},
    {"flockUnlock", NULL, flock_unlock, NULL, NULL, NULL, napi_default, NULL},
    {"mallocTrim", NULL, malloc_trim0, NULL, NULL, NULL, napi_default, NULL},
    {"mallocMmapThreshold", NULL, malloc_mmap_threshold, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
