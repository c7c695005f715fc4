/*
 * wire.c - msgpack by hand, the subset xed's frames use (see wire.h).
 *
 * Integers are written in their shortest form, as msgpack-python does, so a request
 * from C is byte for byte what the Python library would send. Reading accepts every
 * integer width, and treats anything else where an integer is expected as malformed.
 */
#include <string.h>

#include "wire.h"

static void put(struct wbuf *w, const void *src, size_t n)
{
	if (w->overflow || w->cap - w->len < n) {
		w->overflow = 1;
		return;
	}
	memcpy(w->p + w->len, src, n);
	w->len += n;
}

static void put_be(struct wbuf *w, uint8_t tag, uint64_t v, int bytes)
{
	uint8_t b[9];
	b[0] = tag;
	for (int i = 0; i < bytes; i++)
		b[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
	put(w, b, (size_t)bytes + 1);
}

void w_init(struct wbuf *w, void *buf, size_t cap)
{
	w->p = buf;
	w->len = 0;
	w->cap = cap;
	w->overflow = 0;
}

static void header(struct wbuf *w, uint32_t n, uint8_t fix, uint8_t t16, uint8_t t32)
{
	if (n < 16) {
		uint8_t b = (uint8_t)(fix | n);
		put(w, &b, 1);
	} else if (n <= 0xffff) {
		put_be(w, t16, n, 2);
	} else {
		put_be(w, t32, n, 4);
	}
}

void w_array(struct wbuf *w, uint32_t n) { header(w, n, 0x90, 0xdc, 0xdd); }
void w_map(struct wbuf *w, uint32_t n) { header(w, n, 0x80, 0xde, 0xdf); }

size_t w_map32(struct wbuf *w)
{
	size_t at = w->len;
	put_be(w, 0xdf, 0, 4);
	return at;
}

void w_uint(struct wbuf *w, uint64_t v)
{
	if (v < 0x80) {
		uint8_t b = (uint8_t)v;
		put(w, &b, 1);
	} else if (v <= 0xff) {
		put_be(w, 0xcc, v, 1);
	} else if (v <= 0xffff) {
		put_be(w, 0xcd, v, 2);
	} else if (v <= 0xffffffffu) {
		put_be(w, 0xce, v, 4);
	} else {
		put_be(w, 0xcf, v, 8);
	}
}

void w_int(struct wbuf *w, int64_t v)
{
	if (v >= 0) {
		w_uint(w, (uint64_t)v);
	} else if (v >= -32) {
		uint8_t b = (uint8_t)(int8_t)v;
		put(w, &b, 1);
	} else if (v >= -128) {
		put_be(w, 0xd0, (uint64_t)v, 1);
	} else if (v >= -32768) {
		put_be(w, 0xd1, (uint64_t)v, 2);
	} else if (v >= INT32_MIN) {
		put_be(w, 0xd2, (uint64_t)v, 4);
	} else {
		put_be(w, 0xd3, (uint64_t)v, 8);
	}
}

void w_str(struct wbuf *w, const char *s)
{
	size_t n = strlen(s);
	if (n < 32) {
		uint8_t b = (uint8_t)(0xa0 | n);
		put(w, &b, 1);
	} else if (n <= 0xff) {
		put_be(w, 0xd9, n, 1);
	} else {
		put_be(w, 0xda, n & 0xffff, 2);
		n &= 0xffff;
	}
	put(w, s, n);
}

/* the length of the valid UTF-8 sequence s starts with, or 0 (a NUL ends any early) */
static size_t utf8_len(const unsigned char *s)
{
	unsigned lo = 0x80, hi = 0xbf; /* s[1]'s range: no overlong form, surrogate, > U+10FFFF */
	size_t len;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3, lo = s[0] == 0xe0 ? 0xa0 : lo, hi = s[0] == 0xed ? 0x9f : hi;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, lo = s[0] == 0xf0 ? 0x90 : lo, hi = s[0] == 0xf4 ? 0x8f : hi;
	else
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

void utf8_only(char *s)
{
	unsigned char *p = (unsigned char *)s;
	while (*p) {
		size_t n = utf8_len(p);
		if (!n)
			*p = '?', n = 1;
		p += n;
	}
}

void w_kuint(struct wbuf *w, const char *key, uint64_t v)
{
	w_str(w, key);
	w_uint(w, v);
}

void w_kint(struct wbuf *w, const char *key, int64_t v)
{
	w_str(w, key);
	w_int(w, v);
}

void w_kstr(struct wbuf *w, const char *key, const char *s)
{
	w_str(w, key);
	w_str(w, s);
}

void w_kuints(struct wbuf *w, const char *key, const uint64_t *v, uint32_t n)
{
	w_str(w, key);
	w_array(w, n);
	for (uint32_t i = 0; i < n; i++)
		w_uint(w, v[i]);
}

void w_kuints16(struct wbuf *w, const char *key, const uint16_t *v, uint32_t n)
{
	w_str(w, key);
	w_array(w, n);
	for (uint32_t i = 0; i < n; i++)
		w_uint(w, v[i]);
}

/* --- reading ----------------------------------------------------------------------- */
void r_init(struct rbuf *r, const void *buf, size_t len)
{
	r->p = buf;
	r->end = r->p + len;
	r->bad = 0;
}

static int take(struct rbuf *r, size_t n, const uint8_t **at)
{
	if (r->bad || (size_t)(r->end - r->p) < n) {
		r->bad = 1;
		return 0;
	}
	*at = r->p;
	r->p += n;
	return 1;
}

static uint64_t be(struct rbuf *r, int bytes)
{
	const uint8_t *at;
	uint64_t v = 0;
	if (!take(r, (size_t)bytes, &at))
		return 0;
	for (int i = 0; i < bytes; i++)
		v = v << 8 | at[i];
	return v;
}

static int peek(struct rbuf *r)
{
	const uint8_t *at;
	return take(r, 1, &at) ? *at : -1;
}

static int64_t count(struct rbuf *r, uint8_t fixmask, uint8_t fix, uint8_t t16, uint8_t t32)
{
	int t = peek(r);
	if (t >= 0 && (t & fixmask) == fix)
		return t & ~fixmask & 0xff;
	if (t == t16)
		return (int64_t)be(r, 2);
	if (t == t32)
		return (int64_t)be(r, 4);
	r->bad = 1;
	return -1;
}

int64_t r_array(struct rbuf *r) { return count(r, 0xf0, 0x90, 0xdc, 0xdd); }
int64_t r_map(struct rbuf *r) { return count(r, 0xf0, 0x80, 0xde, 0xdf); }

int64_t r_int(struct rbuf *r)
{
	int t = peek(r);
	if (t < 0)
		return 0;
	if (t < 0x80)
		return t;
	if (t >= 0xe0)
		return (int8_t)t;
	switch (t) {
	case 0xcc: return (int64_t)be(r, 1);
	case 0xcd: return (int64_t)be(r, 2);
	case 0xce: return (int64_t)be(r, 4);
	case 0xcf: return (int64_t)be(r, 8);
	case 0xd0: return (int8_t)be(r, 1);
	case 0xd1: return (int16_t)be(r, 2);
	case 0xd2: return (int32_t)be(r, 4);
	case 0xd3: return (int64_t)be(r, 8);
	}
	r->bad = 1;
	return 0;
}

uint64_t r_uint(struct rbuf *r) { return (uint64_t)r_int(r); }

const char *r_str(struct rbuf *r, size_t *len)
{
	int t = peek(r);
	size_t n;
	const uint8_t *at;
	if ((t & 0xe0) == 0xa0)
		n = (size_t)t & 0x1f;
	else if (t == 0xd9 || t == 0xc4)
		n = be(r, 1);
	else if (t == 0xda || t == 0xc5)
		n = be(r, 2);
	else if (t == 0xdb || t == 0xc6)
		n = be(r, 4);
	else {
		r->bad = 1;
		return NULL;
	}
	if (!take(r, n, &at))
		return NULL;
	*len = n;
	return (const char *)at;
}

void r_skip(struct rbuf *r)
{
	/* iterative: a hostile peer cannot nest deep enough to exhaust the stack */
	uint64_t pending = 1;
	while (pending-- && !r->bad) {
		int t = peek(r);
		const uint8_t *at;
		if (t < 0)
			return;
		if (t < 0x80 || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3)
			continue;
		if ((t & 0xf0) == 0x90 || (t & 0xf0) == 0x80 || t == 0xdc || t == 0xdd ||
		    t == 0xde || t == 0xdf) {
			r->p--;
			int64_t n = (t & 0xf0) == 0x90 || t == 0xdc || t == 0xdd ? r_array(r) : 2 * r_map(r);
			pending += (uint64_t)n;
			continue;
		}
		if ((t & 0xe0) == 0xa0 || (t >= 0xc4 && t <= 0xc6) || (t >= 0xd9 && t <= 0xdb)) {
			size_t n;
			r->p--;
			r_str(r, &n);
			continue;
		}
		static const uint8_t fixed[] = {
			[0xca - 0xc7] = 4, [0xcb - 0xc7] = 8, [0xcc - 0xc7] = 1, [0xcd - 0xc7] = 2,
			[0xce - 0xc7] = 4, [0xcf - 0xc7] = 8, [0xd0 - 0xc7] = 1, [0xd1 - 0xc7] = 2,
			[0xd2 - 0xc7] = 4, [0xd3 - 0xc7] = 8, [0xd4 - 0xc7] = 2, [0xd5 - 0xc7] = 3,
			[0xd6 - 0xc7] = 5, [0xd7 - 0xc7] = 9, [0xd8 - 0xc7] = 17,
		};
		if (t >= 0xc7 && t <= 0xd8 && fixed[t - 0xc7]) {
			take(r, fixed[t - 0xc7], &at);
			continue;
		}
		r->bad = 1; /* ext 8/16/32 and reserved tags: never sent by the daemon */
	}
}

int r_find(const struct rbuf *map, const char *key, struct rbuf *val)
{
	struct rbuf r = *map;
	size_t klen = strlen(key);
	int64_t n = r_map(&r);
	for (int64_t i = 0; i < n && !r.bad; i++) {
		size_t len;
		const char *k = r_str(&r, &len);
		if (k && len == klen && memcmp(k, key, klen) == 0) {
			*val = r;
			return !r.bad;
		}
		r_skip(&r);
	}
	return 0;
}

uint64_t r_get_uint(const struct rbuf *map, const char *key)
{
	struct rbuf v;
	return r_find(map, key, &v) ? r_uint(&v) : 0;
}

int64_t r_get_int(const struct rbuf *map, const char *key)
{
	struct rbuf v;
	return r_find(map, key, &v) ? r_int(&v) : 0;
}

int64_t r_get_array(const struct rbuf *map, const char *key, struct rbuf *arr)
{
	if (r_find(map, key, arr))
		return r_array(arr);
	*arr = (struct rbuf){NULL, NULL, 0}; /* an empty list, read as one */
	return 0;
}

int64_t r_get_records(const struct rbuf *map, const char *key, void *out, size_t item,
		      size_t cap, void (*fill)(struct rbuf *, void *))
{
	struct rbuf r;
	int64_t n = r_get_array(map, key, &r);
	if (n < 0 || (uint64_t)n > cap / item)
		return -1;
	memset(out, 0, (size_t)n * item);
	for (int64_t i = 0; i < n && !r.bad; i++) {
		fill(&r, (uint8_t *)out + (size_t)i * item);
		r_skip(&r);
	}
	return r.bad ? -1 : n;
}
