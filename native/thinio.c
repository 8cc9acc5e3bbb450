/*
 * thinio: the few Linux system calls Node does not expose, for sources and targets.
 *   seekData/seekHole (lseek SEEK_DATA/SEEK_HOLE), punchHole/zeroRange (fallocate),
 *   blkDiscard/blkZeroOut/blkGetSize64 (block device ioctls), flockExclusive/flockUnlock (flock(2):
 *   the target lock, released by the kernel when its holder dies), mallocTrim (glibc's malloc_trim:
 *   freed heap memory back to the system) and mallocMmapThreshold (mallopt(M_MMAP_THRESHOLD)), for a
 *   long-running daemon; dmIoctl: device-mapper status, message and open count through
 *   /dev/mapper/control (what `dmsetup status|message|info` do, without starting a process), run off
 *   the main thread and returned as a Promise; pipeSize: a pipe's buffer raised (F_SETPIPE_SZ);
 *   pwriteDirect/preadDirect: a write or read through a file descriptor opened with O_DIRECT, off
 *   the main thread; xxh64/xxh64Blocks: XXH64 (seed 0) of a buffer, or of each block of one, for the
 *   worker threads' hot loops (about 10x xxhash-wasm's speed, which copies into wasm memory first).
 * All but dmIoctl, pipeSize, mallocTrim, the direct calls and the hashes take a file descriptor and byte offsets/lengths as JS numbers and are synchronous.
 * Errors are thrown as Error objects whose `code` is the errno name (EOPNOTSUPP, ENXIO, ...).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/dm-ioctl.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <node_api.h>
/* libxxhash-dev's header, header-only: the same XXH64 the archive format names (docs/FORMAT.md) */
#define XXH_INLINE_ALL
#include <xxhash.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  const char *name = strerrorname_np(err);
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, name ? name : "EIO", msg);
  return NULL;
}

/* Reject a Promise with an Error whose code is the errno name of `err` (EIO when it has none). */
static void reject_errno(napi_env env, napi_deferred deferred, int err, const char *message) {
  const char *ename = strerrorname_np(err);
  napi_value m, code, e;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, ename ? ename : "EIO", NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, m, &e);
  napi_reject_deferred(env, deferred, e);
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

/* pipeSize(fd, bytes): fcntl(F_SETPIPE_SZ) when fd is a pipe: its buffer made at least `bytes` (the
 * kernel rounds up to a power of two pages, at most /proc/sys/fs/pipe-max-size for a non-root
 * process). Returns the new size, or -1 when fd is not a pipe or the size cannot be raised (EPERM,
 * EBUSY, EINVAL): the buffer stays as it was. */
static napi_value pipe_size(napi_env env, napi_callback_info info) {
  int64_t a[2];
  if (!get_args(env, info, 2, a)) return NULL;
  if (a[1] > 0x7fffffff) a[1] = 0x7fffffff;
  int cur = fcntl((int)a[0], F_GETPIPE_SZ);
  if (cur < 0) return num(env, -1);
  if (cur >= a[1]) return num(env, cur);
  int r = fcntl((int)a[0], F_SETPIPE_SZ, (int)a[1]);
  return num(env, r < 0 ? -1 : r);
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

/* ---------------------------------------------------------------------------------------------
 * dmIoctl(op, name[, message]): one device-mapper ioctl on /dev/mapper/control, in the libuv thread
 * pool. op "status": DM_TABLE_STATUS (what `dmsetup status NAME` prints, flags 0, so a thin pool
 * commits its metadata first, as with dmsetup); "message": DM_TARGET_MSG to sector 0; "info":
 * DM_DEV_STATUS. Resolves with {openCount, targets: [{start, length, type, params}]}; rejects with
 * an Error whose code is the errno name (ENXIO: no such device; DM_EXISTS_FLAG is libdevmapper's own,
 * not the kernel's). */

enum dm_op { DM_OP_STATUS, DM_OP_MESSAGE, DM_OP_INFO };

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  enum dm_op op;
  char name[DM_NAME_LEN];
  char *message;
  int err;           /* errno of the failed call, 0 on success */
  const char *what;  /* the failed call */
  struct dm_ioctl *out;
} dm_job;

static struct dm_ioctl *dm_call(int fd, unsigned long req, const char *name, const void *payload, size_t payload_len,
                                size_t out_len, int *err) {
  for (;;) {
    size_t start = (sizeof(struct dm_ioctl) + 7) & ~(size_t)7;
    size_t size = start + (payload_len > out_len ? payload_len : out_len);
    struct dm_ioctl *dmi = calloc(1, size);
    if (!dmi) { *err = ENOMEM; return NULL; }
    dmi->version[0] = DM_VERSION_MAJOR; /* minor 0: every 4.x kernel has what is used here */
    dmi->data_size = (uint32_t)size;
    dmi->data_start = (uint32_t)start;
    strncpy(dmi->name, name, DM_NAME_LEN - 1);
    if (payload_len) memcpy((char *)dmi + start, payload, payload_len);
    int r;
    do r = ioctl(fd, req, dmi); while (r < 0 && errno == EINTR);
    if (r < 0) { *err = errno; free(dmi); return NULL; }
    if ((dmi->flags & DM_BUFFER_FULL_FLAG) && out_len < (64u << 20)) { free(dmi); out_len *= 4; continue; }
    return dmi;
  }
}

static void dm_execute(napi_env env, void *data) {
  (void)env;
  dm_job *j = data;
  int fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
  if (fd < 0) { j->err = errno; j->what = "open(/dev/mapper/control)"; return; }
  if (j->op == DM_OP_STATUS) {
    j->what = "ioctl(DM_TABLE_STATUS)";
    j->out = dm_call(fd, DM_TABLE_STATUS, j->name, NULL, 0, 16384, &j->err);
  } else if (j->op == DM_OP_INFO) {
    j->what = "ioctl(DM_DEV_STATUS)";
    j->out = dm_call(fd, DM_DEV_STATUS, j->name, NULL, 0, 0, &j->err);
  } else {
    j->what = "ioctl(DM_TARGET_MSG)";
    size_t len = sizeof(struct dm_target_msg) + strlen(j->message) + 1;
    struct dm_target_msg *msg = calloc(1, len);
    if (!msg) { j->err = ENOMEM; close(fd); return; }
    msg->sector = 0;
    strcpy(msg->message, j->message);
    j->out = dm_call(fd, DM_TARGET_MSG, j->name, msg, len, 4096, &j->err);
    free(msg);
  }
  close(fd);
}

static void set_num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value n;
  napi_create_double(env, v, &n);
  napi_set_named_property(env, obj, key, n);
}

static void set_str(napi_env env, napi_value obj, const char *key, const char *s, size_t len) {
  napi_value v;
  napi_create_string_utf8(env, s, len, &v);
  napi_set_named_property(env, obj, key, v);
}

static void dm_complete(napi_env env, napi_status status, void *data) {
  dm_job *j = data;
  if (status != napi_ok || !j->out) {
    int err = status != napi_ok ? ECANCELED : j->err;
    char msg[DM_NAME_LEN + 160];
    snprintf(msg, sizeof msg, "%s on %s: %s", j->what ? j->what : "device-mapper", j->name, strerror(err));
    reject_errno(env, j->deferred, err, msg);
  } else {
    struct dm_ioctl *dmi = j->out;
    napi_value res, targets;
    napi_create_object(env, &res);
    set_num(env, res, "openCount", dmi->open_count);
    napi_create_array(env, &targets);
    if (j->op == DM_OP_STATUS) {
      const char *base = (const char *)dmi + dmi->data_start;
      const char *end = (const char *)dmi + dmi->data_size;
      const char *p = base;
      for (uint32_t i = 0; i < dmi->target_count; i++) {
        if (p + sizeof(struct dm_target_spec) > end) break;
        const struct dm_target_spec *spec = (const void *)p;
        const char *params = p + sizeof *spec;
        napi_value t;
        napi_create_object(env, &t);
        set_num(env, t, "start", (double)spec->sector_start);
        set_num(env, t, "length", (double)spec->length);
        set_str(env, t, "type", spec->target_type, strnlen(spec->target_type, DM_MAX_TYPE_NAME));
        set_str(env, t, "params", params, strnlen(params, (size_t)(end - params)));
        napi_set_element(env, targets, i, t);
        p = base + spec->next;
        if (spec->next == 0) break;
      }
    }
    napi_set_named_property(env, res, "targets", targets);
    napi_resolve_deferred(env, j->deferred, res);
  }
  napi_delete_async_work(env, j->work);
  free(j->out);
  free(j->message);
  free(j);
}

static napi_value dm_ioctl_js(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  char op[16] = "";
  size_t len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_string_utf8(env, argv[0], op, sizeof op, &len) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "dmIoctl(op, name[, message])");
    return NULL;
  }
  dm_job *j = calloc(1, sizeof *j);
  if (!j) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  if (strcmp(op, "status") == 0) j->op = DM_OP_STATUS;
  else if (strcmp(op, "info") == 0) j->op = DM_OP_INFO;
  else if (strcmp(op, "message") == 0 && argc >= 3) j->op = DM_OP_MESSAGE;
  else { free(j); napi_throw_type_error(env, "EINVAL", "dmIoctl: op is status, info or message (with a message)"); return NULL; }
  if (napi_get_value_string_utf8(env, argv[1], j->name, sizeof j->name, &len) != napi_ok || len == 0 || len >= DM_NAME_LEN - 1) {
    free(j);
    napi_throw_type_error(env, "EINVAL", "dmIoctl: a device name of 1-126 bytes");
    return NULL;
  }
  if (j->op == DM_OP_MESSAGE) {
    size_t mlen;
    if (napi_get_value_string_utf8(env, argv[2], NULL, 0, &mlen) != napi_ok || mlen == 0 || mlen > 4096 ||
        !(j->message = malloc(mlen + 1))) {
      free(j);
      napi_throw_type_error(env, "EINVAL", "dmIoctl: a message of 1-4096 bytes");
      return NULL;
    }
    napi_get_value_string_utf8(env, argv[2], j->message, mlen + 1, &mlen);
  }
  napi_value promise, rname;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, "thinio.dmIoctl", NAPI_AUTO_LENGTH, &rname);
  napi_create_async_work(env, NULL, rname, dm_execute, dm_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

/* A Uint8Array argument: its bytes and length; 0 when `v` is something else. */
static int u8_arg(napi_env env, napi_value v, const uint8_t **ptr, size_t *len) {
  bool is_ta = false;
  napi_typedarray_type type;
  void *p;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, v, &type, len, &p, NULL, NULL) != napi_ok || type != napi_uint8_array) return 0;
  *ptr = p;
  return 1;
}

/* ---------------------------------------------------------------------------------------------
 * pwriteDirect(fd, bytes, position) / preadDirect(fd, bytes, position): all of `bytes` written at
 * `position`, or read into `bytes` from `position`, through `fd`, which was opened with O_DIRECT, in
 * the libuv thread pool; a Promise of undefined (write) or of the number of bytes read (fewer only
 * at the end of the file). position and the length must be multiples of DIRECT_ALIGN (else EINVAL,
 * nothing done). The bytes go through a DIRECT_ALIGN-aligned buffer of the thread (DIRECT_PIECE
 * bytes, kept for the thread's life), since O_DIRECT needs aligned memory and a JS buffer's is not:
 * that copy costs far less than the page cache's (no page allocation, no dirty accounting, no
 * write-back). Rejects with an Error whose code is the errno name (EINVAL also when the file system
 * or device refuses O_DIRECT). */

#define DIRECT_ALIGN 4096
#define DIRECT_PIECE (4u << 20)

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref ref;       /* keeps `bytes` alive while the thread pool uses it */
  int fd;
  int write;
  uint8_t *mem;
  size_t len;
  int64_t pos;
  int err;
  int64_t at;         /* bytes done */
} direct_job;

static __thread uint8_t *direct_buf;

static void direct_execute(napi_env env, void *data) {
  (void)env;
  direct_job *j = data;
  if (!direct_buf && posix_memalign((void **)&direct_buf, DIRECT_ALIGN, DIRECT_PIECE) != 0) {
    direct_buf = NULL;
    j->err = ENOMEM;
    return;
  }
  while ((size_t)j->at < j->len) {
    size_t n = j->len - (size_t)j->at;
    if (n > DIRECT_PIECE) n = DIRECT_PIECE;
    off_t where = (off_t)(j->pos + j->at);
    size_t done = 0;
    if (j->write) {
      memcpy(direct_buf, j->mem + j->at, n);
      while (done < n) {
        ssize_t r = pwrite(j->fd, direct_buf + done, n - done, where + (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { j->err = r < 0 ? errno : EIO; j->at += (int64_t)done; return; }
        done += (size_t)r;
      }
    } else {
      int eof = 0;
      while (done < n) {
        ssize_t r = pread(j->fd, direct_buf + done, n - done, where + (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { j->err = errno; return; }
        if (r == 0) { eof = 1; break; }
        done += (size_t)r;
        /* past the end of a file a read stops short of a whole block: nothing more to read */
        if (done % DIRECT_ALIGN != 0) { eof = 1; break; }
      }
      memcpy(j->mem + j->at, direct_buf, done);
      j->at += (int64_t)done;
      if (eof) return;
      continue;
    }
    j->at += (int64_t)n;
  }
}

static void direct_complete(napi_env env, napi_status status, void *data) {
  direct_job *j = data;
  if (status != napi_ok || j->err) {
    int err = status != napi_ok ? ECANCELED : j->err;
    char msg[200];
    snprintf(msg, sizeof msg, "%s(O_DIRECT) at byte %lld: %s", j->write ? "pwrite" : "pread", (long long)(j->pos + j->at), strerror(err));
    reject_errno(env, j->deferred, err, msg);
  } else {
    napi_value v;
    if (j->write) napi_get_undefined(env, &v);
    else napi_create_double(env, (double)j->at, &v);
    napi_resolve_deferred(env, j->deferred, v);
  }
  napi_delete_reference(env, j->ref);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value direct_io(napi_env env, napi_callback_info info, int write) {
  napi_value argv[3];
  size_t argc = 3;
  double fd, pos;
  size_t length;
  const uint8_t *ptr;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || !u8_arg(env, argv[1], &ptr, &length) ||
      napi_get_value_double(env, argv[0], &fd) != napi_ok || napi_get_value_double(env, argv[2], &pos) != napi_ok ||
      fd < 0 || fd > 0x7fffffff || pos < 0 || pos > 9007199254740991.0) {
    napi_throw_type_error(env, "EINVAL", write ? "pwriteDirect(fd, Uint8Array, position)" : "preadDirect(fd, Uint8Array, position)");
    return NULL;
  }
  if ((int64_t)pos % DIRECT_ALIGN != 0 || length % DIRECT_ALIGN != 0) {
    napi_throw_error(env, "EINVAL", "O_DIRECT: position and length must be multiples of 4096");
    return NULL;
  }
  direct_job *j = calloc(1, sizeof *j);
  if (!j) { napi_throw_error(env, "ENOMEM", "out of memory"); return NULL; }
  j->fd = (int)fd;
  j->write = write;
  j->mem = (uint8_t *)ptr; /* (read: filled in the thread pool) */
  j->len = length;
  j->pos = (int64_t)pos;
  napi_value promise, rname;
  napi_create_reference(env, argv[1], 1, &j->ref);
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, write ? "thinio.pwriteDirect" : "thinio.preadDirect", NAPI_AUTO_LENGTH, &rname);
  napi_create_async_work(env, NULL, rname, direct_execute, direct_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

static napi_value pwrite_direct(napi_env env, napi_callback_info info) { return direct_io(env, info, 1); }
static napi_value pread_direct(napi_env env, napi_callback_info info) { return direct_io(env, info, 0); }

/* ---------------------------------------------------------------------------------------------
 * xxh64(bytes): XXH64 with seed 0 of a Uint8Array, as a BigInt. xxh64Blocks(bytes, blockSize, out):
 * XXH64 of each blockSize-byte block of `bytes` (the last may be shorter) into the BigUint64Array
 * `out`, which must have room for every block. Synchronous: the caller is a worker thread. */

static napi_value xxh64_js(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  const uint8_t *p;
  size_t len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || !u8_arg(env, argv[0], &p, &len)) {
    napi_throw_type_error(env, "EINVAL", "xxh64(Uint8Array)");
    return NULL;
  }
  napi_value r;
  napi_create_bigint_uint64(env, XXH64(p, len, 0), &r);
  return r;
}

static napi_value xxh64_blocks(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  const uint8_t *p;
  size_t len, outLen;
  double bs;
  bool is_ta = false;
  napi_typedarray_type type;
  void *out;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || !u8_arg(env, argv[0], &p, &len) ||
      napi_get_value_double(env, argv[1], &bs) != napi_ok || bs < 1 || bs > 0x7fffffff ||
      napi_is_typedarray(env, argv[2], &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, argv[2], &type, &outLen, &out, NULL, NULL) != napi_ok || type != napi_biguint64_array) {
    napi_throw_type_error(env, "EINVAL", "xxh64Blocks(Uint8Array, blockSize, BigUint64Array)");
    return NULL;
  }
  size_t b = (size_t)bs;
  size_t count = (len + b - 1) / b;
  if (outLen < count) {
    napi_throw_range_error(env, "EINVAL", "xxh64Blocks: the output has room for fewer hashes than there are blocks");
    return NULL;
  }
  uint64_t *o = out;
  for (size_t i = 0; i < count; i++) {
    size_t at = i * b;
    o[i] = XXH64(p + at, len - at < b ? len - at : b, 0);
  }
  return NULL;
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
    {"dmIoctl", NULL, dm_ioctl_js, NULL, NULL, NULL, napi_default, NULL},
    {"pipeSize", NULL, pipe_size, NULL, NULL, NULL, napi_default, NULL},
    {"pwriteDirect", NULL, pwrite_direct, NULL, NULL, NULL, napi_default, NULL},
    {"preadDirect", NULL, pread_direct, NULL, NULL, NULL, napi_default, NULL},
    {"xxh64", NULL, xxh64_js, NULL, NULL, NULL, napi_default, NULL},
    {"xxh64Blocks", NULL, xxh64_blocks, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
