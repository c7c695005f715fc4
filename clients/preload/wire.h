/*
 * wire.h - the msgpack subset xed's frames use, encoded and decoded by hand.
 *
 * A request is [id, op, {field: value}], a reply [id, errno, {field: value}]. Writing
 * needs arrays, maps, unsigned and signed integers, strings; reading needs the same
 * plus skipping whatever the daemon sends that this side does not use (a newer daemon
 * may add fields). Both sides work on caller-owned buffers: nothing here allocates,
 * locks or makes a system call, so it is safe in any context.
 */
#ifndef XED_WIRE_H
#define XED_WIRE_H

#include <stddef.h>
#include <stdint.h>

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	int overflow; /* set when a write did not fit: the frame must not be sent */
};

void w_init(struct wbuf *w, void *buf, size_t cap);
void w_array(struct wbuf *w, uint32_t n);
void w_map(struct wbuf *w, uint32_t n);
/* a 32-bit map header whose count is patched in later: returns where it starts */
size_t w_map32(struct wbuf *w);
void w_uint(struct wbuf *w, uint64_t v);
void w_int(struct wbuf *w, int64_t v);
void w_str(struct wbuf *w, const char *s);
/* A name the program gave (a sync file's, a fence's), made fit for w_str in place: the
 * daemon decodes strings as UTF-8, and a frame that does not decode is no request and is
 * never answered. The kernel keeps any bytes; here a byte that starts no valid sequence
 * becomes '?' (the length stays the same). */
void utf8_only(char *s);
/* a map key followed by its value */
void w_kuint(struct wbuf *w, const char *key, uint64_t v);
void w_kint(struct wbuf *w, const char *key, int64_t v);
void w_kstr(struct wbuf *w, const char *key, const char *s);
void w_kuints(struct wbuf *w, const char *key, const uint64_t *v, uint32_t n);
void w_kuints16(struct wbuf *w, const char *key, const uint16_t *v, uint32_t n);

struct rbuf {
	const uint8_t *p, *end;
	int bad; /* set on any malformed or unexpected input; every read then yields 0 */
};

void r_init(struct rbuf *r, const void *buf, size_t len);
int64_t r_array(struct rbuf *r); /* element count, or -1 */
int64_t r_map(struct rbuf *r);	 /* pair count, or -1 */
uint64_t r_uint(struct rbuf *r);
int64_t r_int(struct rbuf *r);
/* a string's bytes (not NUL-terminated) and length; NULL if not a string */
const char *r_str(struct rbuf *r, size_t *len);
void r_skip(struct rbuf *r);
/* In the map at r (r then stands at its header), find `key`; on success *val stands
 * at its value and 1 is returned. r itself is not moved. */
int r_find(const struct rbuf *map, const char *key, struct rbuf *val);
uint64_t r_get_uint(const struct rbuf *map, const char *key); /* 0 if absent */
int64_t r_get_int(const struct rbuf *map, const char *key);
/* The array at `key`: its count, *arr left at its first element; 0 (and *arr empty) if
 * absent, -1 if not an array */
int64_t r_get_array(const struct rbuf *map, const char *key, struct rbuf *arr);
/* The records (maps) of array `key` as C structs laid out in out[cap], `item` bytes
 * apart, each zeroed then filled by fill(record, its place): their count (0 if absent),
 * or -1 if the array is malformed or does not fit */
int64_t r_get_records(const struct rbuf *map, const char *key, void *out, size_t item,
		      size_t cap, void (*fill)(struct rbuf *, void *));

#endif /* XED_WIRE_H */
