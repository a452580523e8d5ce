# ruff: noqa: E501  (C source: its own line lengths)
"""C source of the batch kernel (compiled at first use by :mod:`feature_state.kernel`).

It is a line-by-line port of :mod:`feature_state.windows` (fold, prune, lateness, the as-of read with
its head split, ``is_applied``, ``previous_ts``) over the packed state format of
:mod:`feature_state.codec`. Kept as a string so it ships inside the package like any module.
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <setjmp.h>

#define US 1000000LL
#define NO_TS (-4611686018427387904LL)
#define FS_MAGIC 0x0002455441545346LL  /* the bytes "FSTATE\x02\x00" read little-endian */
#define KMAX 8
#define DMAX 32
#define LMAX 3

enum { R_OK = 0, R_NEED_LOG = 1, R_OUT_SMALL = 2, R_BAD_BLOB = -1, R_NO_LOG = -2, R_NOMEM = -3, R_BAD_INPUT = -4 };
enum { A_COUNT = 0, A_SUM = 1, A_MEAN = 2, A_MIN = 3, A_MAX = 4, A_DISTINCT = 5, A_LCOUNT = 6, A_LRATE = 7 };
#define NEEDLOG 1

typedef struct { const char* p; int64_t n; } Str;
static const Str EMPTY = {"", 0};
static const Str MAXID = {"\xf4\x8f\xbf\xbf", 4};

static int scmp(Str a, Str b) {
  int64_t m = a.n < b.n ? a.n : b.n;
  int c = m > 0 ? memcmp(a.p, b.p, (size_t)m) : 0;
  if (c) return c < 0 ? -1 : 1;
  return (a.n > b.n) - (a.n < b.n);
}
static int kcmp(int64_t ta, Str ia, int64_t tb, Str ib) {
  if (ta != tb) return ta < tb ? -1 : 1;
  return scmp(ia, ib);
}
static int64_t fdiv(int64_t a, int64_t b) {
  int64_t q = a / b, r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) q--;
  return q;
}

/* ---------------------------------------------------------------- arena */
typedef struct Chunk { struct Chunk* next; size_t used, cap; size_t pad; } Chunk;
typedef struct { Chunk* head; jmp_buf* oom; } Arena;

/* Chunks are recycled through a per-thread pool: freeing megabytes back to the system after every
   call and faulting them in again on the next was a measurable share of a batch. */
static __thread Chunk* pool = NULL;
static __thread size_t pool_bytes = 0;
#define POOL_MAX ((size_t)64 << 20)

static void* aalloc(Arena* a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  Chunk* c = a->head;
  if (c == NULL || c->used + n > c->cap) {
    size_t cap = n > ((size_t)1 << 20) ? n : ((size_t)1 << 20);
    Chunk** pp = &pool;
    while (*pp != NULL && (*pp)->cap < cap) pp = &(*pp)->next;
    if (*pp != NULL) { c = *pp; *pp = c->next; pool_bytes -= c->cap; }
    else {
      c = (Chunk*)malloc(sizeof(Chunk) + cap);
      if (c == NULL) longjmp(*a->oom, 1);
      c->cap = cap;
    }
    c->next = a->head; c->used = 0; a->head = c;
  }
  void* p = (char*)(c + 1) + c->used;
  c->used += n;
  return p;
}
static void release(Chunk* c) {
  if (pool_bytes + c->cap <= POOL_MAX) { c->next = pool; pool = c; pool_bytes += c->cap; }
  else free(c);
}
static void* azalloc(Arena* a, size_t n) { void* p = aalloc(a, n); memset(p, 0, n); return p; }
static void afree(Arena* a) {
  Chunk* c = a->head;
  while (c) { Chunk* nx = c->next; release(c); c = nx; }
  a->head = NULL;
}
/* keep one chunk, forget its contents */
static void areset(Arena* a) {
  Chunk* c = a->head;
  if (c == NULL) return;
  Chunk* nx = c->next;
  while (nx) { Chunk* n2 = nx->next; release(nx); nx = n2; }
  c->next = NULL; c->used = 0;
}

/* ---------------------------------------------------------------- structures */
typedef struct { int32_t* g; int32_t n, cap; } DSet;
typedef struct { int64_t idx, n, t; Str i; int64_t* v; DSet* d; } Tile;   /* v: c[K] s[K] lo[K] hi[K] */
typedef struct { Tile* a; int64_t m, cap; } Level;
typedef struct { int64_t ts; Str id; const int64_t* num; const uint8_t* ok; const int32_t* dv; } Ev;
typedef struct {
  int32_t ns, has_log, dirty, pad;
  int64_t wm; Str wm_id;
  int32_t n_last, pad2; int64_t last_t[2]; Str last_i[2];
  Level lv[LMAX];
  Ev* log; int64_t nlog, caplog, nlog0;
  const Ev** app; int64_t napp, capp;   /* events applied in this call, in fold order (commit records) */
  int32_t* idh; int64_t idcap;   /* hash of the parsed log's ids (packed-log mode) */
} Ent;
typedef struct { int32_t src, L, K, D; int64_t res[LMAX], ret[LMAX], logret; int32_t nf[KMAX], df[DMAX]; } NS;
typedef struct { int32_t ns, agg, li, fidx, ons, oli; int64_t ntiles; } Feat;
typedef struct { int32_t ns; int64_t window_us; } SP;

typedef struct {
  Arena ar, scr;
  jmp_buf oom;
  int32_t n_ns, n_feat, n_sp, NF, DF;
  int64_t lateness;
  NS* ns; Feat* ft; SP* sp;
  /* strings */
  Str* gs; uint64_t* gh; int64_t ng, gcap; int32_t* tab; int64_t tcap;
  int64_t* stamp; int64_t cur; int64_t* local;
  /* entities */
  int64_t n_ent; Ent* ents;
  /* orders */
  const int64_t* o_ent;
} Ctx;

/* ---------------------------------------------------------------- interning */
static uint64_t hstr(Str s) {
  uint64_t h = 1469598103934665603ULL;
  for (int64_t i = 0; i < s.n; ++i) { h ^= (uint8_t)s.p[i]; h *= 1099511628211ULL; }
  return h;
}
static void tab_put(Ctx* C, int32_t gid) {
  uint64_t mask = (uint64_t)C->tcap - 1, j = C->gh[gid] & mask;
  while (C->tab[j]) j = (j + 1) & mask;
  C->tab[j] = gid + 1;
}
static int32_t intern(Ctx* C, Str s) {
  uint64_t h = hstr(s);
  if (C->tab != NULL) {
    uint64_t mask = (uint64_t)C->tcap - 1, j = h & mask;
    while (C->tab[j]) {
      int32_t g = C->tab[j] - 1;
      if (C->gh[g] == h && scmp(C->gs[g], s) == 0) return g;
      j = (j + 1) & mask;
    }
  }
  if (C->ng == C->gcap) {
    int64_t nc = C->gcap ? C->gcap * 2 : 1024;
    Str* ns = (Str*)aalloc(&C->ar, sizeof(Str) * nc);
    uint64_t* nh = (uint64_t*)aalloc(&C->ar, sizeof(uint64_t) * nc);
    if (C->ng) { memcpy(ns, C->gs, sizeof(Str) * C->ng); memcpy(nh, C->gh, sizeof(uint64_t) * C->ng); }
    C->gs = ns; C->gh = nh; C->gcap = nc;
  }
  int32_t g = (int32_t)C->ng++;
  C->gs[g] = s; C->gh[g] = h;
  if (C->tab == NULL || C->ng * 2 > C->tcap) {
    int64_t tc = C->tcap ? C->tcap * 2 : 4096;
    while (C->ng * 2 > tc) tc *= 2;
    C->tab = (int32_t*)azalloc(&C->ar, sizeof(int32_t) * tc);
    C->tcap = tc;
    for (int32_t k = 0; k < (int32_t)C->ng; ++k) tab_put(C, k);
  } else {
    tab_put(C, g);
  }
  return g;
}

/* ---------------------------------------------------------------- tiles */
static int64_t lower(const Level* L, int64_t idx) {
  int64_t lo = 0, hi = L->m;
  while (lo < hi) { int64_t mid = (lo + hi) >> 1; if (L->a[mid].idx < idx) lo = mid + 1; else hi = mid; }
  return lo;
}
static Tile* find(const Level* L, int64_t idx) {
  int64_t p = lower(L, idx);
  return (p < L->m && L->a[p].idx == idx) ? &L->a[p] : NULL;
}
static void init_tile(Ctx* C, const NS* ns, Tile* t, int64_t idx) {
  t->idx = idx; t->n = 0; t->t = NO_TS; t->i = EMPTY;
  t->v = ns->K ? (int64_t*)azalloc(&C->ar, sizeof(int64_t) * 4 * ns->K) : NULL;
  t->d = ns->D ? (DSet*)azalloc(&C->ar, sizeof(DSet) * ns->D) : NULL;
}
static Tile* get_or_add(Ctx* C, Ent* E, int li, int64_t idx) {
  const NS* ns = &C->ns[E->ns];
  Level* L = &E->lv[li];
  int64_t p = lower(L, idx);
  if (p < L->m && L->a[p].idx == idx) return &L->a[p];
  if (L->m == L->cap) {
    int64_t nc = L->cap * 2 + 8;
    Tile* na = (Tile*)aalloc(&C->ar, sizeof(Tile) * nc);
    if (L->m) memcpy(na, L->a, sizeof(Tile) * L->m);
    L->a = na; L->cap = nc;
  }
  memmove(&L->a[p + 1], &L->a[p], sizeof(Tile) * (L->m - p));
  L->m++;
  init_tile(C, ns, &L->a[p], idx);
  return &L->a[p];
}
static void dset_add(Ctx* C, DSet* s, int32_t g) {
  for (int32_t j = 0; j < s->n; ++j) if (s->g[j] == g) return;
  if (s->n == s->cap) {
    int32_t nc = s->cap ? s->cap * 2 : 4;
    int32_t* ng = (int32_t*)aalloc(&C->ar, sizeof(int32_t) * nc);
    if (s->n) memcpy(ng, s->g, sizeof(int32_t) * s->n);
    s->g = ng; s->cap = nc;
  }
  s->g[s->n++] = g;
}
static void add_ev(Ctx* C, const NS* ns, Tile* t, const Ev* e, int finest) {
  int K = ns->K;
  t->n += 1;
  if (finest) {
    if (kcmp(e->ts, e->id, t->t, t->i) > 0) { t->t = e->ts; t->i = e->id; }
  } else if (e->ts > t->t) {
    t->t = e->ts;
  }
  for (int k = 0; k < K; ++k) {
    if (!e->ok[k]) continue;
    int64_t v = e->num[k];
    if (t->v[k] == 0) { t->v[2 * K + k] = v; t->v[3 * K + k] = v; }
    else { if (v < t->v[2 * K + k]) t->v[2 * K + k] = v; if (v > t->v[3 * K + k]) t->v[3 * K + k] = v; }
    t->v[k] += 1;
    t->v[K + k] += v;
  }
  for (int d = 0; d < ns->D; ++d) if (e->dv[d] >= 0) dset_add(C, &t->d[d], e->dv[d]);
}
/* an event as a stand-alone tile (scratch memory) */
static Tile* event_tile(Ctx* C, const NS* ns, const Ev* e) {
  Tile* t = (Tile*)aalloc(&C->scr, sizeof(Tile));
  int K = ns->K;
  t->idx = 0; t->n = 1; t->t = e->ts; t->i = EMPTY;
  t->v = K ? (int64_t*)aalloc(&C->scr, sizeof(int64_t) * 4 * K) : NULL;
  for (int k = 0; k < K; ++k) {
    int64_t v = e->ok[k] ? e->num[k] : 0;
    t->v[k] = e->ok[k] ? 1 : 0; t->v[K + k] = v; t->v[2 * K + k] = v; t->v[3 * K + k] = v;
  }
  t->d = ns->D ? (DSet*)aalloc(&C->scr, sizeof(DSet) * ns->D) : NULL;
  for (int d = 0; d < ns->D; ++d) {
    t->d[d].g = (int32_t*)&e->dv[d];
    t->d[d].n = e->dv[d] >= 0 ? 1 : 0;
    t->d[d].cap = t->d[d].n;
  }
  return t;
}

static void fold(Ctx* C, Ent* E, const Ev* e) {
  const NS* ns = &C->ns[E->ns];
  for (int li = 0; li < ns->L; ++li) {
    Tile* t = get_or_add(C, E, li, fdiv(e->ts, ns->res[li] * US));
    add_ev(C, ns, t, e, li == 0);
  }
  if (kcmp(e->ts, e->id, E->wm, E->wm_id) > 0) { E->wm = e->ts; E->wm_id = e->id; }
  int64_t kt[3]; Str ki[3]; int n = 0;
  for (int j = 0; j < E->n_last; ++j)
    if (kcmp(E->last_t[j], E->last_i[j], e->ts, e->id) != 0) { kt[n] = E->last_t[j]; ki[n] = E->last_i[j]; n++; }
  kt[n] = e->ts; ki[n] = e->id; n++;
  for (int a = 1; a < n; ++a)            /* sort descending */
    for (int b = a; b > 0 && kcmp(kt[b], ki[b], kt[b - 1], ki[b - 1]) > 0; --b) {
      int64_t tt = kt[b]; kt[b] = kt[b - 1]; kt[b - 1] = tt;
      Str ts = ki[b]; ki[b] = ki[b - 1]; ki[b - 1] = ts;
    }
  E->n_last = n < 2 ? n : 2;
  for (int j = 0; j < E->n_last; ++j) { E->last_t[j] = kt[j]; E->last_i[j] = ki[j]; }
}

static void prune(Ctx* C, Ent* E) {
  const NS* ns = &C->ns[E->ns];
  if (E->wm == NO_TS) return;
  for (int li = 0; li < ns->L; ++li) {
    Level* L = &E->lv[li];
    int64_t oldest = fdiv(E->wm - ns->ret[li] * US, ns->res[li] * US);
    int64_t p = lower(L, oldest);
    if (p > 0) { memmove(L->a, L->a + p, sizeof(Tile) * (L->m - p)); L->m -= p; }
  }
}

static int is_late(const Ent* E, int64_t ts, int64_t lateness) {
  return E->wm != NO_TS && ts < E->wm - lateness;
}

static int needs_log(Ctx* C, const Ent* E, int64_t ts, Str id) {
  if (kcmp(E->wm, E->wm_id, ts, id) <= 0) return 0;
  const NS* ns = &C->ns[E->ns];
  const Tile* t = find(&E->lv[0], fdiv(ts, ns->res[0] * US));
  return t != NULL && kcmp(t->t, t->i, ts, id) >= 0;
}

/* returns 1 applied, 0 not, -1 needs the log */
static int is_applied(Ctx* C, const Ent* E, int64_t ts, Str id) {
  int c = kcmp(E->wm, E->wm_id, ts, id);
  if (c <= 0) return c == 0;
  const NS* ns = &C->ns[E->ns];
  const Tile* t = find(&E->lv[0], fdiv(ts, ns->res[0] * US));
  if (t == NULL) return 0;
  c = kcmp(t->t, t->i, ts, id);
  if (c < 0) return 0;
  if (c == 0) return 1;
  if (!E->has_log) return -1;
  for (int64_t j = 0; j < E->nlog; ++j)
    if (E->log[j].ts == ts && scmp(E->log[j].id, id) == 0) return 1;
  return 0;
}

/* ---------------------------------------------------------------- reads */
typedef struct { Tile** p; int64_t n, cap; } Parts;
static void push(Ctx* C, Parts* P, Tile* t) {
  if (P->n == P->cap) {
    int64_t nc = P->cap * 2 + 16;
    Tile** np = (Tile**)aalloc(&C->scr, sizeof(Tile*) * nc);
    if (P->n) memcpy(np, P->p, sizeof(Tile*) * P->n);
    P->p = np; P->cap = nc;
  }
  P->p[P->n++] = t;
}

static int head(Ctx* C, Ent* E, int k, int64_t ts, Str id, Parts* P) {
  const NS* ns = &C->ns[E->ns];
  int64_t r = ns->res[k] * US, h = fdiv(ts, r);
  Tile* t = find(&E->lv[k], h);
  if (t == NULL) return 0;
  if (t->t < ts || (k == 0 && kcmp(t->t, t->i, ts, id) <= 0)) { push(C, P, t); return 0; }
  if (k == 0) {
    if (!E->has_log) return NEEDLOG;
    int64_t start = h * r;
    for (int64_t j = 0; j < E->nlog; ++j) {
      const Ev* e = &E->log[j];
      if (start <= e->ts && e->ts < start + r && kcmp(e->ts, e->id, ts, id) <= 0) push(C, P, event_tile(C, ns, e));
    }
    return 0;
  }
  int64_t fr = ns->res[k - 1] * US;
  const Level* F = &E->lv[k - 1];
  int64_t a = fdiv(h * r, fr), b = fdiv(ts, fr);
  for (int64_t p = lower(F, a); p < F->m && F->a[p].idx < b; ++p) push(C, P, &F->a[p]);
  return head(C, E, k - 1, ts, id, P);
}

typedef struct { int64_t e, li, n; int label; Parts P; } Cached;

typedef struct {
  int64_t i, ts; Str id;
  Cached* cache; int n_cache;
  int8_t* self_state;   /* per ns: 0 unknown, 1 none, 2 tile */
  Tile** self_tile;
} ReadCtx;

static int tiles_for(Ctx* C, ReadCtx* R, Ev** oev, int ns_i, int64_t e, int li, int64_t n, int label, Parts** out) {
  for (int j = 0; j < R->n_cache; ++j) {
    Cached* c = &R->cache[j];
    if (c->e == e && c->li == li && c->n == n && c->label == label) { *out = &c->P; return 0; }
  }
  Cached* c = &R->cache[R->n_cache];
  c->e = e; c->li = li; c->n = n; c->label = label;
  c->P.p = NULL; c->P.n = 0; c->P.cap = 0;
  Ent* E = &C->ents[e];
  const NS* ns = &C->ns[E->ns];
  Str rid = label ? MAXID : R->id;
  const Level* L = &E->lv[li];
  if (L->m > 0) {
    int64_t h = fdiv(R->ts, ns->res[li] * US);
    int64_t p = lower(L, h - n + 1);
    if (kcmp(E->wm, E->wm_id, R->ts, rid) <= 0) {
      for (; p < L->m && L->a[p].idx <= h; ++p) push(C, &c->P, &L->a[p]);
    } else {
      for (; p < L->m && L->a[p].idx < h; ++p) push(C, &c->P, &L->a[p]);
      if (head(C, E, li, R->ts, rid, &c->P)) return NEEDLOG;
    }
  }
  if (!label && oev[ns_i] != NULL) {
    if (R->self_state[ns_i] == 0) {
      int a = is_applied(C, E, R->ts, R->id);
      if (a < 0) return NEEDLOG;
      if (a) R->self_state[ns_i] = 1;
      else { R->self_state[ns_i] = 2; R->self_tile[ns_i] = event_tile(C, ns, oev[ns_i]); }
    }
    if (R->self_state[ns_i] == 2) push(C, &c->P, R->self_tile[ns_i]);
  }
  R->n_cache++;
  *out = &c->P;
  return 0;
}

static double aggregate(Ctx* C, const NS* ns, const Feat* f, const Parts* P) {
  int K = ns->K;
  int64_t i = f->fidx;
  switch (f->agg) {
    case A_COUNT: { int64_t s = 0; for (int64_t j = 0; j < P->n; ++j) s += P->p[j]->n; return (double)s; }
    case A_DISTINCT: {
      int64_t cur = ++C->cur, cnt = 0;
      for (int64_t j = 0; j < P->n; ++j) {
        const DSet* d = &P->p[j]->d[i];
        for (int32_t q = 0; q < d->n; ++q) { int32_t g = d->g[q]; if (C->stamp[g] != cur) { C->stamp[g] = cur; cnt++; } }
      }
      return (double)cnt;
    }
    case A_SUM: { int64_t s = 0; for (int64_t j = 0; j < P->n; ++j) s += P->p[j]->v[K + i]; return (double)s / 10000.0; }
    default: break;
  }
  int64_t s = 0, c = 0, lo = 0, hi = 0; int live = 0;
  for (int64_t j = 0; j < P->n; ++j) {
    const int64_t* v = P->p[j]->v;
    if (!v[i]) continue;
    if (!live) { lo = v[2 * K + i]; hi = v[3 * K + i]; live = 1; }
    else { if (v[2 * K + i] < lo) lo = v[2 * K + i]; if (v[3 * K + i] > hi) hi = v[3 * K + i]; }
    s += v[K + i]; c += v[i];
  }
  if (!live) return NAN;
  if (f->agg == A_MEAN) return (double)s / (double)(c * 10000);
  if (f->agg == A_MIN) return (double)lo / 10000.0;
  return (double)hi / 10000.0;
}

/* 1 found (*out), 0 none, NEEDLOG */
static int previous_ts(Ctx* C, Ent* E, int64_t ts, Str id, int64_t* out) {
  const NS* ns = &C->ns[E->ns];
  if (kcmp(E->wm, E->wm_id, ts, id) <= 0) {
    int found = 0; int64_t best = 0;
    for (int j = 0; j < E->n_last; ++j)
      if (kcmp(E->last_t[j], E->last_i[j], ts, id) < 0 && (!found || E->last_t[j] > best)) { best = E->last_t[j]; found = 1; }
    *out = best;
    return found;
  }
  int64_t r0 = ns->res[0] * US, fl = fdiv(ts, r0) * r0;
  const Tile* t0 = find(&E->lv[0], fdiv(ts, r0));
  if (t0 != NULL) {
    if (kcmp(t0->t, t0->i, ts, id) < 0) { *out = t0->t; return 1; }
    if (!E->has_log) return -1;
    int found = 0; int64_t best = 0;
    for (int64_t j = 0; j < E->nlog; ++j) {
      const Ev* e = &E->log[j];
      if (fl <= e->ts && e->ts < fl + r0 && kcmp(e->ts, e->id, ts, id) < 0 && (!found || e->ts > best)) { best = e->ts; found = 1; }
    }
    if (found) { *out = best; return 1; }
  }
  int found = 0; int64_t best = 0;
  for (int li = 0; li < ns->L; ++li) {
    const Level* L = &E->lv[li];
    int64_t r = ns->res[li] * US;
    for (int64_t p = 0; p < L->m; ++p) {
      const Tile* t = &L->a[p];
      if ((t->idx + 1) * r <= fl && t->n && (!found || t->t > best)) { best = t->t; found = 1; }
    }
  }
  *out = best;
  return found;
}

/* Features of order i as of itself into row (n_feat + n_sp doubles). Returns 0 or NEEDLOG. */
static int read_one(Ctx* C, int64_t i, int64_t ts, Str id, Ev** oev, double* row) {
  areset(&C->scr);
  ReadCtx R;
  R.i = i; R.ts = ts; R.id = id; R.n_cache = 0;
  R.cache = (Cached*)aalloc(&C->scr, sizeof(Cached) * (2 * C->n_feat + 1));
  R.self_state = (int8_t*)azalloc(&C->scr, (size_t)C->n_ns);
  R.self_tile = (Tile**)azalloc(&C->scr, sizeof(Tile*) * C->n_ns);
  const int64_t* ent = C->o_ent + i * C->n_ns;
  for (int f = 0; f < C->n_feat; ++f) {
    const Feat* F = &C->ft[f];
    int64_t e = ent[F->ns];
    if (e < 0) { row[f] = NAN; continue; }
    const NS* ns = &C->ns[F->ns];
    Parts* P;
    if (F->agg < A_LCOUNT) {
      if (tiles_for(C, &R, oev, F->ns, e, F->li, F->ntiles, 0, &P)) return NEEDLOG;
      row[f] = aggregate(C, ns, F, P);
      continue;
    }
    if (tiles_for(C, &R, oev, F->ns, e, F->li, F->ntiles, 1, &P)) return NEEDLOG;
    int64_t frauds = 0;
    for (int64_t j = 0; j < P->n; ++j) frauds += P->p[j]->n;
    if (F->agg == A_LCOUNT) { row[f] = (double)frauds; continue; }
    int64_t eo = ent[F->ons];
    if (eo < 0) return -2;
    Parts* Q;
    if (tiles_for(C, &R, oev, F->ons, eo, F->oli, F->ntiles, 0, &Q)) return NEEDLOG;
    int64_t orders_n = 0;
    for (int64_t j = 0; j < Q->n; ++j) orders_n += Q->p[j]->n;
    row[f] = orders_n ? (double)frauds / (double)orders_n : NAN;
  }
  for (int s = 0; s < C->n_sp; ++s) {
    const SP* S = &C->sp[s];
    int64_t e = ent[S->ns];
    double* out = &row[C->n_feat + s];
    if (e < 0) { *out = NAN; continue; }
    int64_t prev = 0;
    int r = previous_ts(C, &C->ents[e], ts, id, &prev);
    if (r < 0) return NEEDLOG;
    *out = (r == 0 || prev < ts - S->window_us) ? NAN : (double)(ts - prev) / (double)US;
  }
  return 0;
}

/* ---------------------------------------------------------------- blobs */
static int64_t rdw(const uint8_t* b, int64_t i) { int64_t v; memcpy(&v, b + 8 * i, 8); return v; }

static int parse_ent(Ctx* C, Ent* E, const uint8_t* b, int64_t len) {
  const NS* ns = &C->ns[E->ns];
  E->wm = NO_TS; E->wm_id = EMPTY; E->n_last = 0;
  for (int li = 0; li < LMAX; ++li) { E->lv[li].a = NULL; E->lv[li].m = 0; E->lv[li].cap = 0; }
  if (len == 0) return 0;
  if (len % 8 || len < 64) return R_BAD_BLOB;
  int64_t W = len / 8;
  if (rdw(b, 0) != FS_MAGIC) return R_BAD_BLOB;
  int64_t T = rdw(b, 1), L = rdw(b, 2), K = rdw(b, 3), D = rdw(b, 4), nl = rdw(b, 5);
  if (L != ns->L || K != ns->K || D != ns->D || nl < 0 || nl > 2 || T < 8 || T >= W) return R_BAD_BLOB;
  int64_t S = rdw(b, T);
  if (S < 0 || T + 2 + S > W) return R_BAD_BLOB;
  int64_t data0 = 8 * (T + 2 + S);
  int64_t dlen = len - data0;
  Str* strs = (Str*)aalloc(&C->ar, sizeof(Str) * (S + 1));
  int32_t* gid = (int32_t*)aalloc(&C->ar, sizeof(int32_t) * (S + 1));
  for (int64_t s = 0; s < S; ++s) {
    int64_t a = rdw(b, T + 1 + s), z = rdw(b, T + 2 + s);
    if (a < 0 || z < a || z > dlen) return R_BAD_BLOB;
    strs[s].p = (const char*)b + data0 + a; strs[s].n = z - a; gid[s] = -1;
  }
#define STR(x, out) do { int64_t _x = (x); if (_x == -1) out = EMPTY; else if (_x < 0 || _x >= S) return R_BAD_BLOB; else out = strs[_x]; } while (0)
  E->wm = rdw(b, 6);
  STR(rdw(b, 7), E->wm_id);
  int64_t w = 8;
  E->n_last = (int32_t)nl;
  for (int j = 0; j < nl; ++j) { E->last_t[j] = rdw(b, w); STR(rdw(b, w + 1), E->last_i[j]); w += 2; }
  int64_t m[LMAX];
  if (w + 2 * L > T) return R_BAD_BLOB;
  for (int li = 0; li < L; ++li) {
    if (rdw(b, w) != ns->res[li]) return R_BAD_BLOB;
    m[li] = rdw(b, w + 1); w += 2;
    if (m[li] < 0 || m[li] > W) return R_BAD_BLOB;
  }
  for (int li = 0; li < L; ++li) {
    int64_t M = m[li];
    int64_t need = M * (4 + 4 * K + D);
    if (w + need > T) return R_BAD_BLOB;
    Level* Lv = &E->lv[li];
    Lv->cap = M + 8; Lv->m = M;
    Lv->a = (Tile*)aalloc(&C->ar, sizeof(Tile) * Lv->cap);
    int64_t base = w, dv = w + need;
    int64_t total = 0;
    for (int64_t q = 0; q < M; ++q) {
      Tile* t = &Lv->a[q];
      t->idx = rdw(b, base + q); t->n = rdw(b, base + M + q); t->t = rdw(b, base + 2 * M + q);
      STR(rdw(b, base + 3 * M + q), t->i);
      t->v = K ? (int64_t*)aalloc(&C->ar, sizeof(int64_t) * 4 * K) : NULL;
      for (int k = 0; k < K; ++k)
        for (int part = 0; part < 4; ++part) t->v[part * K + k] = rdw(b, base + (4 + 4 * k + part) * M + q);
      t->d = D ? (DSet*)aalloc(&C->ar, sizeof(DSet) * D) : NULL;
    }
    for (int d = 0; d < D; ++d)
      for (int64_t q = 0; q < M; ++q) {
        int64_t cnt = rdw(b, base + (4 + 4 * K + d) * M + q);
        if (cnt < 0 || dv + total + cnt > T) return R_BAD_BLOB;
        DSet* s = &Lv->a[q].d[d];
        s->n = (int32_t)cnt; s->cap = (int32_t)cnt;
        s->g = cnt ? (int32_t*)aalloc(&C->ar, sizeof(int32_t) * cnt) : NULL;
        for (int64_t z = 0; z < cnt; ++z) {
          int64_t x = rdw(b, dv + total + z);
          if (x < 0 || x >= S) return R_BAD_BLOB;
          if (gid[x] < 0) gid[x] = intern(C, strs[x]);
          s->g[z] = gid[x];
        }
        total += cnt;
      }
    w = dv + total;
    for (int64_t q = 1; q < M; ++q) if (Lv->a[q].idx <= Lv->a[q - 1].idx) return R_BAD_BLOB;
  }
#undef STR
  return 0;
}

/* merge sort of gids by string bytes */
static void sort_gids(Ctx* C, int32_t* a, int32_t n, int32_t* tmp) {
  if (n < 2) return;
  if (n <= 16) {
    for (int32_t x = 1; x < n; ++x)
      for (int32_t y = x; y > 0 && scmp(C->gs[a[y]], C->gs[a[y - 1]]) < 0; --y) { int32_t t = a[y]; a[y] = a[y - 1]; a[y - 1] = t; }
    return;
  }
  int32_t h = n / 2;
  sort_gids(C, a, h, tmp);
  sort_gids(C, a + h, n - h, tmp);
  int32_t i = 0, j = h, k = 0;
  while (i < h && j < n) tmp[k++] = scmp(C->gs[a[j]], C->gs[a[i]]) < 0 ? a[j++] : a[i++];
  while (i < h) tmp[k++] = a[i++];
  while (j < n) tmp[k++] = a[j++];
  memcpy(a, tmp, sizeof(int32_t) * n);
}

typedef struct { uint8_t* buf; int64_t cap, pos; int overflow, owned; } Out;
/* an owned buffer grows; a caller's buffer only records the overflow (the caller retries larger) */
static int out_room(Out* o, int64_t n) {
  if (o->pos + n <= o->cap) return 1;
  if (!o->owned) { o->overflow = 1; return 0; }
  int64_t nc = o->cap * 2 + n + 65536;
  uint8_t* nb = (uint8_t*)realloc(o->buf, (size_t)nc);
  if (nb == NULL) { o->overflow = 1; return 0; }
  o->buf = nb; o->cap = nc;
  return 1;
}
static void wr(Out* o, int64_t v) { if (out_room(o, 8)) memcpy(o->buf + o->pos, &v, 8); o->pos += 8; }

/* encode entity E at o->pos; the layout is documented in feature_state/codec.py */
static void encode(Ctx* C, Ent* E, Out* o) {
  const NS* ns = &C->ns[E->ns];
  int K = ns->K, D = ns->D, L = ns->L;
  int64_t nstr_max = 1 + 2 + E->lv[0].m;
  int32_t maxset = 0;
  for (int li = 0; li < L; ++li)
    for (int64_t q = 0; q < E->lv[li].m; ++q)
      for (int d = 0; d < D; ++d) {
        nstr_max += E->lv[li].a[q].d[d].n;
        if (E->lv[li].a[q].d[d].n > maxset) maxset = E->lv[li].a[q].d[d].n;
      }
  Str* strs = (Str*)aalloc(&C->scr, sizeof(Str) * (nstr_max + 1));
  int32_t* tmp = (int32_t*)aalloc(&C->scr, sizeof(int32_t) * (maxset + 1));
  int64_t S = 0;
  int64_t start = o->pos;
  int64_t cur = ++C->cur;
  /* header; the string-table offset (word 1) is patched at the end */
  wr(o, FS_MAGIC); wr(o, 0); wr(o, L); wr(o, K); wr(o, D); wr(o, E->n_last); wr(o, E->wm);
  if (E->wm_id.n) { strs[S] = E->wm_id; wr(o, S++); } else wr(o, -1);
  for (int j = 0; j < E->n_last; ++j) {
    wr(o, E->last_t[j]);
    if (E->last_i[j].n) { strs[S] = E->last_i[j]; wr(o, S++); } else wr(o, -1);
  }
  for (int li = 0; li < L; ++li) { wr(o, ns->res[li]); wr(o, E->lv[li].m); }
  for (int li = 0; li < L; ++li) {
    const Level* Lv = &E->lv[li];
    int64_t M = Lv->m;
    for (int64_t q = 0; q < M; ++q) wr(o, Lv->a[q].idx);
    for (int64_t q = 0; q < M; ++q) wr(o, Lv->a[q].n);
    for (int64_t q = 0; q < M; ++q) wr(o, Lv->a[q].t);
    for (int64_t q = 0; q < M; ++q) { if (Lv->a[q].i.n) { strs[S] = Lv->a[q].i; wr(o, S++); } else wr(o, -1); }
    for (int k = 0; k < K; ++k)
      for (int part = 0; part < 4; ++part)
        for (int64_t q = 0; q < M; ++q) wr(o, Lv->a[q].v[part * K + k]);
    for (int d = 0; d < D; ++d)
      for (int64_t q = 0; q < M; ++q) wr(o, Lv->a[q].d[d].n);
    for (int d = 0; d < D; ++d)
      for (int64_t q = 0; q < M; ++q) {
        DSet* s = &Lv->a[q].d[d];
        sort_gids(C, s->g, s->n, tmp);
        for (int32_t z = 0; z < s->n; ++z) {
          int32_t g = s->g[z];
          if (C->stamp[g] != cur) { C->stamp[g] = cur; C->local[g] = S; strs[S++] = C->gs[g]; }
          wr(o, C->local[g]);
        }
      }
  }
  int64_t T = (o->pos - start) / 8;
  if (!o->overflow) memcpy(o->buf + start + 8, &T, 8);
  wr(o, S);
  int64_t off = 0;
  wr(o, 0);
  for (int64_t s = 0; s < S; ++s) { off += strs[s].n; wr(o, off); }
  if (out_room(o, off)) {
    int64_t p = o->pos;
    for (int64_t s = 0; s < S; ++s) { if (strs[s].n) memcpy(o->buf + p, strs[s].p, (size_t)strs[s].n); p += strs[s].n; }
  }
  o->pos += off;
  int64_t pad = (8 - ((o->pos - start) % 8)) % 8;   /* blob length: a multiple of 8 */
  if (out_room(o, pad)) memset(o->buf + o->pos, 0, (size_t)pad);
  o->pos += pad;
}


/* ---------------------------------------------------------------- packed logs (the embedded store) */
#define LOG_MAGIC 0x0002474F4C534646LL   /* the bytes "FFSLOG\x02\x00" read little-endian */

/* Layout (codec.py): magic, T, n, K, D; n rows of (ts, sid(id), num[K], ok[K], sid(dv)[D]); string table. */
static int parse_log(Ctx* C, Ent* E, const uint8_t* b, int64_t len) {
  const NS* ns = &C->ns[E->ns];
  E->has_log = 1; E->nlog = 0; E->nlog0 = 0;
  if (len == 0) { E->caplog = 16; E->log = (Ev*)aalloc(&C->ar, sizeof(Ev) * E->caplog); return 0; }
  if (len % 8 || len < 48) return R_BAD_BLOB;
  int64_t W = len / 8;
  if (rdw(b, 0) != LOG_MAGIC) return R_BAD_BLOB;
  int64_t T = rdw(b, 1), n = rdw(b, 2), K = rdw(b, 3), D = rdw(b, 4);
  int64_t rw = 2 + 2 * K + D;
  if (K != ns->K || D != ns->D || n < 0 || T != 5 + n * rw || T >= W) return R_BAD_BLOB;
  int64_t S = rdw(b, T);
  if (S < 0 || T + 2 + S > W) return R_BAD_BLOB;
  int64_t data0 = 8 * (T + 2 + S), dlen = len - data0;
  Str* strs = (Str*)aalloc(&C->ar, sizeof(Str) * (S + 1));
  int32_t* gid = (int32_t*)aalloc(&C->ar, sizeof(int32_t) * (S + 1));
  for (int64_t q = 0; q < S; ++q) {
    int64_t a = rdw(b, T + 1 + q), z = rdw(b, T + 2 + q);
    if (a < 0 || z < a || z > dlen) return R_BAD_BLOB;
    strs[q].p = (const char*)b + data0 + a; strs[q].n = z - a; gid[q] = -1;
  }
  E->caplog = n + 16; E->nlog = n; E->nlog0 = n;
  E->log = (Ev*)aalloc(&C->ar, sizeof(Ev) * E->caplog);
  for (int64_t r = 0; r < n; ++r) {
    int64_t w = 5 + r * rw;
    Ev* ev = &E->log[r];
    ev->ts = rdw(b, w);
    int64_t x = rdw(b, w + 1);
    if (x < 0 || x >= S) return R_BAD_BLOB;
    ev->id = strs[x];
    int64_t* num = K ? (int64_t*)aalloc(&C->ar, sizeof(int64_t) * K) : NULL;
    uint8_t* ok = K ? (uint8_t*)aalloc(&C->ar, (size_t)K) : NULL;
    int32_t* dv = D ? (int32_t*)aalloc(&C->ar, sizeof(int32_t) * D) : NULL;
    for (int k = 0; k < K; ++k) { num[k] = rdw(b, w + 2 + k); ok[k] = rdw(b, w + 2 + K + k) != 0; }
    for (int d = 0; d < D; ++d) {
      int64_t y = rdw(b, w + 2 + 2 * K + d);
      if (y == -1) { dv[d] = -1; continue; }
      if (y < 0 || y >= S) return R_BAD_BLOB;
      if (gid[y] < 0) gid[y] = intern(C, strs[y]);
      dv[d] = gid[y];
    }
    ev->num = num; ev->ok = ok; ev->dv = dv;
    if (r > 0 && kcmp(E->log[r - 1].ts, E->log[r - 1].id, ev->ts, ev->id) >= 0) return R_BAD_BLOB;
  }
  return 0;
}

/* 1 when the parsed (stored) log holds ``id`` */
static int log_has(Ctx* C, Ent* E, Str id) {
  if (E->nlog0 == 0) return 0;
  if (E->idh == NULL) {
    int64_t cap = 16;
    while (cap < 2 * E->nlog0) cap *= 2;
    E->idh = (int32_t*)azalloc(&C->ar, sizeof(int32_t) * cap);
    E->idcap = cap;
    for (int64_t r = 0; r < E->nlog0; ++r) {
      uint64_t j = hstr(E->log[r].id) & (uint64_t)(cap - 1);
      while (E->idh[j]) j = (j + 1) & (uint64_t)(cap - 1);
      E->idh[j] = (int32_t)(r + 1);
    }
  }
  uint64_t j = hstr(id) & (uint64_t)(E->idcap - 1);
  while (E->idh[j]) {
    if (scmp(E->log[E->idh[j] - 1].id, id) == 0) return 1;
    j = (j + 1) & (uint64_t)(E->idcap - 1);
  }
  return 0;
}

/* The stored log (sorted) merged with the events applied in this call (appended in (ts, id) order),
   without entries older than the watermark minus the log retention; encoded at o->pos. */
static void encode_log(Ctx* C, Ent* E, Out* o) {
  const NS* ns = &C->ns[E->ns];
  int K = ns->K, D = ns->D;
  int64_t floor = E->wm - ns->logret * US;
  Ev** rows = (Ev**)aalloc(&C->scr, sizeof(Ev*) * (E->nlog + 1));
  int64_t a = 0, b = E->nlog0, n = 0;
  while (a < E->nlog0 || b < E->nlog) {
    Ev* x;
    if (b >= E->nlog || (a < E->nlog0 && kcmp(E->log[a].ts, E->log[a].id, E->log[b].ts, E->log[b].id) <= 0)) x = &E->log[a++];
    else x = &E->log[b++];
    if (x->ts >= floor) rows[n++] = x;
  }
  Str* strs = (Str*)aalloc(&C->scr, sizeof(Str) * (n * (1 + D) + 1));
  int64_t S = 0, start = o->pos, cur = ++C->cur;
  wr(o, LOG_MAGIC); wr(o, 5 + n * (2 + 2 * K + D)); wr(o, n); wr(o, K); wr(o, D);
  for (int64_t r = 0; r < n; ++r) {
    const Ev* ev = rows[r];
    wr(o, ev->ts);
    strs[S] = ev->id; wr(o, S++);
    for (int k = 0; k < K; ++k) wr(o, ev->ok[k] ? ev->num[k] : 0);
    for (int k = 0; k < K; ++k) wr(o, ev->ok[k] ? 1 : 0);
    for (int d = 0; d < D; ++d) {
      int32_t g = ev->dv[d];
      if (g < 0) { wr(o, -1); continue; }
      if (C->stamp[g] != cur) { C->stamp[g] = cur; C->local[g] = S; strs[S++] = C->gs[g]; }
      wr(o, C->local[g]);
    }
  }
  wr(o, S);
  int64_t off = 0;
  wr(o, 0);
  for (int64_t q = 0; q < S; ++q) { off += strs[q].n; wr(o, off); }
  if (out_room(o, off)) {
    int64_t p = o->pos;
    for (int64_t q = 0; q < S; ++q) { if (strs[q].n) memcpy(o->buf + p, strs[q].p, (size_t)strs[q].n); p += strs[q].n; }
  }
  o->pos += off;
  int64_t pad = (8 - ((o->pos - start) % 8)) % 8;   /* blob length: a multiple of 8 */
  if (out_room(o, pad)) memset(o->buf + o->pos, 0, (size_t)pad);
  o->pos += pad;
}

/* ---------------------------------------------------------------- commit records (Redis batch script) */
static void wbytes(Out* o, const void* p, int64_t n) { if (out_room(o, n) && n) memcpy(o->buf + o->pos, p, (size_t)n); o->pos += n; }
static void wi4(Out* o, int32_t v) { wbytes(o, &v, 4); }
static void wbe(Out* o, uint64_t v, int n) { uint8_t b[8]; for (int k = 0; k < n; ++k) b[k] = (uint8_t)(v >> (8 * (n - 1 - k))); wbytes(o, b, n); }
static void mp_str(Out* o, Str s) { uint8_t t = 0xdb; wbytes(o, &t, 1); wbe(o, (uint64_t)s.n, 4); wbytes(o, s.p, s.n); }
static void mp_int(Out* o, int64_t v) { uint8_t t = 0xd3; wbytes(o, &t, 1); wbe(o, (uint64_t)v, 8); }
static void mp_nil(Out* o) { uint8_t t = 0xc0; wbytes(o, &t, 1); }
static void mp_arr(Out* o, int64_t n) { uint8_t t = 0xdd; wbytes(o, &t, 1); wbe(o, (uint64_t)n, 4); }
/* one event as msgpack [ts, id, [nums], [dvals]] (windows.encode_event's format) */
static void mp_event(Ctx* C, Out* o, const NS* ns, const Ev* e) {
  mp_arr(o, 4); mp_int(o, e->ts); mp_str(o, e->id);
  mp_arr(o, ns->K);
  for (int k = 0; k < ns->K; ++k) { if (e->ok[k]) mp_int(o, e->num[k]); else mp_nil(o); }
  mp_arr(o, ns->D);
  for (int d = 0; d < ns->D; ++d) { if (e->dv[d] >= 0) mp_str(o, C->gs[e->dv[d]]); else mp_nil(o); }
}
static int dec(char* b, int64_t v) {   /* decimal digits of v into b; returns the length */
  char t[24]; int n = 0, neg = v < 0;
  uint64_t u = neg ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
  do { t[n++] = (char)('0' + (u % 10)); u /= 10; } while (u);
  int k = 0;
  if (neg) b[k++] = '-';
  while (n) b[k++] = t[--n];
  return k;
}
/* One entity's commit record for the Redis batch script:
   header <i4 x6: name, version, new version, state, floor lengths, event count; then those fields
   (numbers as decimal text, the floor as "(<µs>" for ZRANGEBYSCORE); then per event
   <i4 x3: id, ts, value lengths, and the id, the ts (decimal) and the value (msgpack, encode_event's format). */
static void write_record(Ctx* C, Ent* E, Str name, int64_t version, Out* o) {
  const NS* ns = &C->ns[E->ns];
  char vb[24], wb[24], fb[26];
  int vl = dec(vb, version), wl = dec(wb, version + 1);
  fb[0] = '(';
  int fl = 1 + dec(fb + 1, E->wm - ns->logret * US);
  int64_t h = o->pos;
  wi4(o, (int32_t)name.n); wi4(o, vl); wi4(o, wl); wi4(o, 0); wi4(o, fl); wi4(o, (int32_t)E->napp);
  wbytes(o, name.p, name.n); wbytes(o, vb, vl); wbytes(o, wb, wl);
  int64_t s0 = o->pos;
  encode(C, E, o);
  int32_t sl = (int32_t)(o->pos - s0);
  if (!o->overflow) memcpy(o->buf + h + 12, &sl, 4);
  wbytes(o, fb, fl);
  for (int64_t q = 0; q < E->napp; ++q) {
    const Ev* e = E->app[q];
    char tb[24];
    int tl = dec(tb, e->ts);
    int64_t h2 = o->pos;
    wi4(o, (int32_t)e->id.n); wi4(o, tl); wi4(o, 0);
    wbytes(o, e->id.p, e->id.n); wbytes(o, tb, tl);
    int64_t p0 = o->pos;
    mp_event(C, o, ns, e);
    int32_t el = (int32_t)(o->pos - p0);
    if (!o->overflow) memcpy(o->buf + h2 + 8, &el, 4);
  }
}

/* ---------------------------------------------------------------- blob map (the embedded store's memory) */
/* key → (packed state, packed log), each value its own malloc'd buffer. Called with the GIL held. */
typedef struct { char* key; int64_t klen; uint64_t h; uint8_t* st; int64_t sl, sc; uint8_t* lg; int64_t ll, lc; } MEnt;
typedef struct { MEnt* e; int64_t cap, n, log_entries, bytes; } Map;

void* fs_map_new(void) {
  Map* m = (Map*)calloc(1, sizeof(Map));
  if (m == NULL) return NULL;
  m->cap = 1024;
  m->e = (MEnt*)calloc((size_t)m->cap, sizeof(MEnt));
  if (m->e == NULL) { free(m); return NULL; }
  return m;
}
void fs_map_free(void* mp) {
  Map* m = (Map*)mp;
  if (m == NULL) return;
  for (int64_t i = 0; i < m->cap; ++i) if (m->e[i].key) { free(m->e[i].key); free(m->e[i].st); free(m->e[i].lg); }
  free(m->e); free(m);
}
static MEnt* map_find(Map* m, const char* k, int64_t kl, int create) {
  Str ks = {k, kl};
  uint64_t h = hstr(ks);
  if (create && (m->n + 1) * 2 > m->cap) {
    int64_t nc = m->cap * 2;
    MEnt* ne = (MEnt*)calloc((size_t)nc, sizeof(MEnt));
    if (ne == NULL) return NULL;
    for (int64_t i = 0; i < m->cap; ++i)
      if (m->e[i].key) {
        uint64_t j = m->e[i].h & (uint64_t)(nc - 1);
        while (ne[j].key) j = (j + 1) & (uint64_t)(nc - 1);
        ne[j] = m->e[i];
      }
    free(m->e); m->e = ne; m->cap = nc;
  }
  uint64_t j = h & (uint64_t)(m->cap - 1);
  while (m->e[j].key) {
    if (m->e[j].h == h && m->e[j].klen == kl && memcmp(m->e[j].key, k, (size_t)kl) == 0) return &m->e[j];
    j = (j + 1) & (uint64_t)(m->cap - 1);
  }
  if (!create) return NULL;
  char* kc = (char*)malloc((size_t)kl + 1);
  if (kc == NULL) return NULL;
  memcpy(kc, k, (size_t)kl);
  memset(&m->e[j], 0, sizeof(MEnt));
  m->e[j].key = kc; m->e[j].klen = kl; m->e[j].h = h;
  m->n++;
  return &m->e[j];
}
static int64_t log_n(const uint8_t* b, int64_t len) { return len >= 24 ? rdw(b, 2) : 0; }
/* copy b[0..n) into *dst, reusing its buffer when it is large enough (capacity kept in *cap) */
static int map_copy(uint8_t** dst, int64_t* cap, const uint8_t* b, int64_t n) {
  if (*dst == NULL || *cap < n || *cap > 4 * n + 4096) {
    int64_t nc = n + n / 4 + 64;
    uint8_t* nb = (uint8_t*)malloc((size_t)nc);
    if (nb == NULL) return R_NOMEM;
    free(*dst); *dst = nb; *cap = nc;
  }
  if (n) memcpy(*dst, b, (size_t)n);
  return 0;
}
/* replace an entry's state (and log, when lg != NULL); 0 or R_NOMEM */
static int map_put(Map* m, const char* k, int64_t kl, const uint8_t* st, int64_t sl, const uint8_t* lg, int64_t ll) {
  MEnt* me = map_find(m, k, kl, 1);
  if (me == NULL) return R_NOMEM;
  if (map_copy(&me->st, &me->sc, st, sl)) return R_NOMEM;
  m->bytes += sl - me->sl;
  me->sl = sl;
  if (lg != NULL) {
    int64_t before = me->lg ? log_n(me->lg, me->ll) : 0;
    if (map_copy(&me->lg, &me->lc, lg, ll)) return R_NOMEM;
    m->log_entries += log_n(lg, ll) - before;
    m->bytes += ll - me->ll;
    me->ll = ll;
  }
  return 0;
}
int64_t fs_map_put(void* mp, const uint8_t* k, int64_t kl, const uint8_t* st, int64_t sl, const uint8_t* lg, int64_t ll) {
  return map_put((Map*)mp, (const char*)k, kl, st, sl, lg, ll);
}
/* put entities sel[0..n) of a kernel output: key e = kbuf[koff[e]..), state buf[soff[e]..soff[e+1]),
   log buf[loff[e]..loff[e+1]) */
int64_t fs_map_put_many(void* mp, int64_t n, const int64_t* sel, const uint8_t* kbuf, const int64_t* koff,
                        const uint8_t* buf, const int64_t* soff, const int64_t* loff) {
  for (int64_t q = 0; q < n; ++q) {
    int64_t e = sel[q];
    int r = map_put((Map*)mp, (const char*)kbuf + koff[e], koff[e + 1] - koff[e], buf + soff[e], soff[e + 1] - soff[e],
                    buf + loff[e], loff[e + 1] - loff[e]);
    if (r) return r;
  }
  return 0;
}
/* stats: [entries, log entries, bytes] */
void fs_map_stats(void* mp, int64_t* out) { Map* m = (Map*)mp; out[0] = m->n; out[1] = m->log_entries; out[2] = m->bytes; }
/* copy the state (which 0) or log (1) of the given keys out: lengths -1 when absent; returns bytes needed */
int64_t fs_map_get(void* mp, int64_t n, const uint8_t* kbuf, const int64_t* koff, int64_t which,
                   uint8_t* out, int64_t cap, int64_t* lens) {
  Map* m = (Map*)mp;
  int64_t pos = 0;
  for (int64_t i = 0; i < n; ++i) {
    MEnt* me = map_find(m, (const char*)kbuf + koff[i], koff[i + 1] - koff[i], 0);
    const uint8_t* b = me ? (which ? me->lg : me->st) : NULL;
    int64_t l = me ? (which ? me->ll : me->sl) : -1;
    if (me && b == NULL) l = -1;
    lens[i] = l;
    if (l > 0) { if (pos + l <= cap) memcpy(out + pos, b, (size_t)l); pos += l; }
  }
  return pos;
}
/* every entry: keys, states and logs into three buffers with per-entry lengths; returns 0 or the sizes needed */
int64_t fs_map_dump(void* mp, uint8_t* kout, int64_t kcap, uint8_t* sout, int64_t scap, uint8_t* lout, int64_t lcap,
                    int64_t* lens, int64_t* need) {
  Map* m = (Map*)mp;
  int64_t kp = 0, sp = 0, lp = 0, q = 0;
  for (int64_t i = 0; i < m->cap; ++i) {
    MEnt* me = &m->e[i];
    if (!me->key) continue;
    if (kp + me->klen <= kcap) memcpy(kout + kp, me->key, (size_t)me->klen);
    if (sp + me->sl <= scap && me->sl) memcpy(sout + sp, me->st, (size_t)me->sl);
    if (lp + me->ll <= lcap && me->ll) memcpy(lout + lp, me->lg, (size_t)me->ll);
    kp += me->klen; sp += me->sl; lp += me->ll;
    lens[3 * q] = me->klen; lens[3 * q + 1] = me->sl; lens[3 * q + 2] = me->lg ? me->ll : -1;
    q++;
  }
  need[0] = kp; need[1] = sp; need[2] = lp;
  return (kp > kcap || sp > scap || lp > lcap) ? R_OUT_SMALL : 0;
}

static int parse_cfg(Ctx* C, const int64_t* cfg) {
  int64_t w = 0;
  C->n_ns = (int32_t)cfg[w++]; C->n_feat = (int32_t)cfg[w++]; C->n_sp = (int32_t)cfg[w++];
  C->lateness = cfg[w++]; C->NF = (int32_t)cfg[w++]; C->DF = (int32_t)cfg[w++];
  if (C->n_ns <= 0 || C->NF > KMAX * 4 || C->DF > DMAX * 4 || C->n_feat < 0 || C->n_sp < 0) return R_BAD_INPUT;
  C->ns = (NS*)azalloc(&C->ar, sizeof(NS) * C->n_ns);
  for (int j = 0; j < C->n_ns; ++j) {
    NS* s = &C->ns[j];
    s->src = (int32_t)cfg[w++]; s->L = (int32_t)cfg[w++];
    for (int q = 0; q < LMAX; ++q) s->res[q] = cfg[w++];
    for (int q = 0; q < LMAX; ++q) s->ret[q] = cfg[w++];
    s->K = (int32_t)cfg[w++]; s->D = (int32_t)cfg[w++]; s->logret = cfg[w++];
    for (int q = 0; q < KMAX; ++q) s->nf[q] = (int32_t)cfg[w++];
    for (int q = 0; q < DMAX; ++q) s->df[q] = (int32_t)cfg[w++];
    if (s->L < 1 || s->L > LMAX || s->K > KMAX || s->D > DMAX) return R_BAD_INPUT;
  }
  C->ft = (Feat*)azalloc(&C->ar, sizeof(Feat) * (C->n_feat + 1));
  for (int f = 0; f < C->n_feat; ++f) {
    Feat* F = &C->ft[f];
    F->ns = (int32_t)cfg[w++]; F->agg = (int32_t)cfg[w++]; F->li = (int32_t)cfg[w++]; F->fidx = (int32_t)cfg[w++];
    F->ons = (int32_t)cfg[w++]; F->oli = (int32_t)cfg[w++]; F->ntiles = cfg[w++];
    if (F->ns < 0 || F->ns >= C->n_ns || F->ons >= C->n_ns) return R_BAD_INPUT;
  }
  C->sp = (SP*)azalloc(&C->ar, sizeof(SP) * (C->n_sp + 1));
  for (int s = 0; s < C->n_sp; ++s) { C->sp[s].ns = (int32_t)cfg[w++]; C->sp[s].window_us = cfg[w++]; }
  return 0;
}

/* ---------------------------------------------------------------- entry point */
/*
  cfg: [n_ns, n_feat, n_sp, lateness_us, NF, DF,
        per ns: src, L, res0..2, ret0..2, K, D, nf[KMAX], df[DMAX],
        per feature: ns, agg, li, fidx, ons, oli, ntiles,
        per sp: ns, window_us]
  mode 0: apply (fold in (ts, id) order, lateness, duplicates, new blobs); 1: read (nothing applied).
  Order columns: o_ts[n], o_id[n] (string index), o_ent[n*n_ns] (entity or -1), o_num[n*NF], o_ok[n*NF],
  o_dv[n*DF] (string index or -1), o_known[n*n_ns].
  Stored states: entity e is blob_buf[blob_pos[2e] .. blob_pos[2e] + blob_pos[2e+1]) (length 0: empty).
  Log columns: log_off[n_ent+1] rows of lg_ts, lg_id, lg_num[KMAX], lg_ok[KMAX], lg_dv[DMAX].
  Strings: sbuf + soff[n_str+1].
  Outputs: feat[n*(n_feat+n_sp)], late_ns[n], late_wm[n], o_flag[n*n_ns] (1 applied, 2 duplicate),
  need_ent/need_start[*n_need] (R_NEED_LOG), blobs out_buf/out_off[n_ent+1]/out_wm[n_ent],
  *out_need (bytes needed on R_OUT_SMALL).
*/
int64_t fs_run(const int64_t* cfg, int64_t mode,
               int64_t n_ent, const int64_t* ent_ns, const uint8_t* blob_buf, const int64_t* blob_pos,
               const uint8_t* has_log, const int64_t* log_off, const int64_t* lg_ts, const int64_t* lg_id,
               const int64_t* lg_num, const uint8_t* lg_ok, const int64_t* lg_dv,
               const uint8_t* sbuf, const int64_t* soff, int64_t n_str,
               int64_t n, const int64_t* o_ts, const int64_t* o_id, const int64_t* o_ent, const int64_t* o_num,
               const uint8_t* o_ok, const int64_t* o_dv, const uint8_t* o_known,
               double* feat, int64_t* late_ns, int64_t* late_wm, uint8_t* o_flag,
               int64_t* need_ent, int64_t* need_start, int64_t* n_need,
               uint8_t* out_buf, int64_t out_cap, int64_t* out_off, int64_t* out_wm, int64_t* out_need,
               const uint8_t* lblob_buf, const int64_t* lblob_off, int64_t* out_loff,
               void* map, const uint8_t* kbuf, const int64_t* koff, const int64_t* versions) {
  Ctx* C = (Ctx*)calloc(1, sizeof(Ctx));
  if (C == NULL) return R_NOMEM;
  volatile int64_t rc = R_OK;
  C->ar.oom = &C->oom; C->scr.oom = &C->oom;
  if (setjmp(C->oom)) { rc = R_NOMEM; goto done; }
  {
  { int r = parse_cfg(C, cfg); if (r) { rc = r; goto done; } }

  /* strings of the call */
  Str* sv = (Str*)aalloc(&C->ar, sizeof(Str) * (n_str + 1));
  for (int64_t s = 0; s < n_str; ++s) { sv[s].p = (const char*)sbuf + soff[s]; sv[s].n = soff[s + 1] - soff[s]; }
  int32_t* sg = (int32_t*)aalloc(&C->ar, sizeof(int32_t) * (n_str + 1));
  for (int64_t s = 0; s < n_str; ++s) sg[s] = -1;
#define SID(x) ((x) >= 0 && (x) < n_str ? sv[(x)] : EMPTY)
#define SGID(x) ((x) < 0 || (x) >= n_str ? -1 : (sg[(x)] >= 0 ? sg[(x)] : (sg[(x)] = intern(C, sv[(x)]))))

  /* entities */
  C->n_ent = n_ent;
  C->ents = (Ent*)azalloc(&C->ar, sizeof(Ent) * (n_ent + 1));
  for (int64_t e = 0; e < n_ent; ++e) {
    Ent* E = &C->ents[e];
    E->ns = (int32_t)ent_ns[e];
    if (E->ns < 0 || E->ns >= C->n_ns) { rc = R_BAD_INPUT; goto done; }
    if (map != NULL) {   /* the embedded store: blobs live in the map */
      MEnt* me = map_find((Map*)map, (const char*)kbuf + koff[e], koff[e + 1] - koff[e], 0);
      int r = parse_ent(C, E, me ? me->st : NULL, me && me->st ? me->sl : 0);
      if (r) { rc = r; goto done; }
      r = parse_log(C, E, me ? me->lg : NULL, me && me->lg ? me->ll : 0);
      if (r) { rc = r; goto done; }
      continue;
    }
    int r = parse_ent(C, E, blob_buf + blob_pos[2 * e], blob_pos[2 * e + 1]);
    if (r) { rc = r; goto done; }
    if (lblob_buf != NULL) {
      int r2 = parse_log(C, E, lblob_buf + lblob_off[e], lblob_off[e + 1] - lblob_off[e]);
      if (r2) { rc = r2; goto done; }
      continue;
    }
    E->has_log = has_log[e];
    if (E->has_log) {
      const NS* ns = &C->ns[E->ns];
      int64_t a = log_off[e], z = log_off[e + 1];
      E->caplog = (z - a) + 16; E->nlog = z - a;
      E->log = (Ev*)aalloc(&C->ar, sizeof(Ev) * E->caplog);
      for (int64_t j = a; j < z; ++j) {
        Ev* ev = &E->log[j - a];
        ev->ts = lg_ts[j]; ev->id = SID(lg_id[j]);
        int64_t* num = (int64_t*)aalloc(&C->ar, sizeof(int64_t) * (KMAX + 1));
        uint8_t* ok = (uint8_t*)aalloc(&C->ar, KMAX + 1);
        int32_t* dv = (int32_t*)aalloc(&C->ar, sizeof(int32_t) * (DMAX + 1));
        for (int k = 0; k < ns->K; ++k) { num[k] = lg_num[j * KMAX + k]; ok[k] = lg_ok[j * KMAX + k]; }
        for (int d = 0; d < ns->D; ++d) { int64_t x = lg_dv[j * DMAX + d]; dv[d] = x < 0 ? -1 : SGID(x); }
        ev->num = num; ev->ok = ok; ev->dv = dv;
      }
    }
  }
  /* the orders' own events, per namespace */
  int32_t NN = C->n_ns;
  Ev** oev = (Ev**)azalloc(&C->ar, sizeof(Ev*) * n * NN + 1);
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < NN; ++j) {
      int64_t e = o_ent[i * NN + j];
      if (e < -1 || e >= n_ent) { rc = R_BAD_INPUT; goto done; }
      if (e >= 0 && C->ents[e].ns != j) { rc = R_BAD_INPUT; goto done; }
      const NS* ns = &C->ns[j];
      if (e < 0 || ns->src != 0) continue;
      Ev* ev = (Ev*)aalloc(&C->ar, sizeof(Ev));
      int64_t* num = (int64_t*)aalloc(&C->ar, sizeof(int64_t) * (ns->K + 1));
      uint8_t* ok = (uint8_t*)aalloc(&C->ar, (size_t)ns->K + 1);
      int32_t* dv = (int32_t*)aalloc(&C->ar, sizeof(int32_t) * (ns->D + 1));
      ev->ts = o_ts[i]; ev->id = SID(o_id[i]);
      for (int k = 0; k < ns->K; ++k) { num[k] = o_num[i * C->NF + ns->nf[k]]; ok[k] = o_ok[i * C->NF + ns->nf[k]]; }
      for (int d = 0; d < ns->D; ++d) dv[d] = SGID(o_dv[i * C->DF + ns->df[d]]);
      ev->num = num; ev->ok = ok; ev->dv = dv;
      oev[i * NN + j] = ev;
    }
  }
  C->stamp = (int64_t*)azalloc(&C->ar, sizeof(int64_t) * (C->ng + 1));
  C->local = (int64_t*)azalloc(&C->ar, sizeof(int64_t) * (C->ng + 1));
  C->o_ent = o_ent;

  /* plan: which entities need their log for the reads (decided on the states as loaded) */
  *n_need = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < NN; ++j) {
      int64_t e = o_ent[i * NN + j];
      if (e < 0 || C->ents[e].has_log) continue;
      Str rid = C->ns[j].src == 0 ? SID(o_id[i]) : MAXID;
      if (!needs_log(C, &C->ents[e], o_ts[i], rid)) continue;
      int64_t r0 = C->ns[j].res[0] * US, st = fdiv(o_ts[i], r0) * r0, q;
      for (q = 0; q < *n_need; ++q) if (need_ent[q] == e && need_start[q] == st) break;
      if (q == *n_need) { need_ent[q] = e; need_start[q] = st; (*n_need)++; }
    }
  if (*n_need) { rc = R_NEED_LOG; goto done; }

  int64_t width = C->n_feat + C->n_sp;
  int64_t* order = (int64_t*)aalloc(&C->ar, sizeof(int64_t) * (n + 1));
  Str* oid = (Str*)aalloc(&C->ar, sizeof(Str) * (n + 1));
  for (int64_t i = 0; i < n; ++i) { order[i] = i; oid[i] = SID(o_id[i]); }
  if (mode == 0) {   /* bottom-up merge sort by (ts, id) */
    int64_t* tmp = (int64_t*)aalloc(&C->ar, sizeof(int64_t) * (n + 1));
    for (int64_t wdt = 1; wdt < n; wdt *= 2) {
      for (int64_t lo = 0; lo < n; lo += 2 * wdt) {
        int64_t mid = lo + wdt < n ? lo + wdt : n, hi = lo + 2 * wdt < n ? lo + 2 * wdt : n;
        int64_t a = lo, b = mid, k = lo;
        while (a < mid && b < hi)
          tmp[k++] = kcmp(o_ts[order[b]], oid[order[b]], o_ts[order[a]], oid[order[a]]) < 0 ? order[b++] : order[a++];
        while (a < mid) tmp[k++] = order[a++];
        while (b < hi) tmp[k++] = order[b++];
      }
      memcpy(order, tmp, sizeof(int64_t) * n);
    }
  }
  uint8_t* known = (uint8_t*)o_known;
  if (lblob_buf != NULL || map != NULL) {   /* which (entity, order) pairs the stored logs already hold */
    known = (uint8_t*)azalloc(&C->ar, (size_t)(n * NN + 1));
    for (int64_t i = 0; i < n; ++i)
      for (int j = 0; j < NN; ++j) {
        int64_t e = o_ent[i * NN + j];
        if (e >= 0 && C->ns[j].src == 0) known[i * NN + j] = (uint8_t)log_has(C, &C->ents[e], oid[i]);
      }
  }
  memset(o_flag, 0, (size_t)(n * NN));
  for (int64_t q = 0; q < n; ++q) {
    int64_t i = order[q], ts = o_ts[i];
    Str id = oid[i];
    Ev** ev = &oev[i * NN];
    double* row = &feat[i * width];
    late_ns[i] = -1; late_wm[i] = 0;
    if (mode == 0) {
      for (int j = 0; j < NN; ++j) {
        int64_t e = o_ent[i * NN + j];
        if (e < 0 || C->ns[j].src != 0) continue;
        if (is_late(&C->ents[e], ts, C->lateness)) { late_ns[i] = j; late_wm[i] = C->ents[e].wm; break; }
      }
    }
    int r = read_one(C, i, ts, id, ev, row);
    if (r == -2) { rc = R_BAD_INPUT; goto done; }
    if (r) {
      if (mode == 0 && late_ns[i] >= 0) { for (int64_t f = 0; f < width; ++f) row[f] = NAN; }
      else { rc = R_NO_LOG; goto done; }
    }
    if (mode != 0 || late_ns[i] >= 0) continue;
    for (int j = 0; j < NN; ++j) {
      int64_t e = o_ent[i * NN + j];
      if (e < 0 || C->ns[j].src != 0) continue;
      if (known[i * NN + j]) { o_flag[i * NN + j] = 2; continue; }
      Ent* E = &C->ents[e];
      fold(C, E, ev[j]);
      E->dirty = 1;
      o_flag[i * NN + j] = 1;
      if (versions != NULL) {
        if (E->napp == E->capp) {
          int64_t nc = E->capp * 2 + 4;
          const Ev** na = (const Ev**)aalloc(&C->ar, sizeof(Ev*) * nc);
          if (E->napp) memcpy(na, E->app, sizeof(Ev*) * E->napp);
          E->app = na; E->capp = nc;
        }
        E->app[E->napp++] = ev[j];
      }
      if (E->has_log) {
        if (E->nlog == E->caplog) {
          int64_t nc = E->caplog * 2 + 16;
          Ev* nl = (Ev*)aalloc(&C->ar, sizeof(Ev) * nc);
          if (E->nlog) memcpy(nl, E->log, sizeof(Ev) * E->nlog);
          E->log = nl; E->caplog = nc;
        }
        E->log[E->nlog++] = *ev[j];
      }
    }
  }
  if (mode == 0 && versions != NULL) {   /* commit records for the Redis batch script */
    Out o = {out_buf, out_cap, 0, 0, 0};
    for (int64_t e = 0; e < n_ent; ++e) {
      Ent* E = &C->ents[e];
      out_off[e] = o.pos;
      out_wm[e] = E->wm;
      if (!E->dirty) continue;
      areset(&C->scr);
      prune(C, E);
      Str name = {(const char*)kbuf + koff[e], koff[e + 1] - koff[e]};
      write_record(C, E, name, versions[e], &o);
    }
    out_off[n_ent] = o.pos;
    if (o.overflow) { *out_need = o.pos; rc = R_OUT_SMALL; }
  } else if (mode == 0) {
    Out o = {out_buf, out_cap, 0, 0, 0};
    for (int64_t e = 0; e < n_ent; ++e) {
      Ent* E = &C->ents[e];
      out_off[e] = o.pos;
      out_wm[e] = E->wm;
      if (!E->dirty) continue;
      areset(&C->scr);
      prune(C, E);
      encode(C, E, &o);
    }
    out_off[n_ent] = o.pos;
    if (lblob_buf != NULL || map != NULL) {
      for (int64_t e = 0; e < n_ent; ++e) {
        Ent* E = &C->ents[e];
        out_loff[e] = o.pos;
        if (!E->dirty) continue;
        areset(&C->scr);
        encode_log(C, E, &o);
      }
      out_loff[n_ent] = o.pos;
    }
    if (o.overflow) { *out_need = o.pos; rc = R_OUT_SMALL; }
  }
  }
done:
  afree(&C->ar); afree(&C->scr);
  free(C);
  return rc;
#undef SID
#undef SGID
}

/* fs_run with its arguments in one int64 vector (pointers as integers), in fs_run's order: one foreign
   call argument instead of 46 keeps a one-order read cheap. */
int64_t fs_run_v(const int64_t* a) {
#define P_(i, T) ((T)(intptr_t)a[i])
  return fs_run(P_(0, const int64_t*), a[1], a[2], P_(3, const int64_t*), P_(4, const uint8_t*), P_(5, const int64_t*),
                P_(6, const uint8_t*), P_(7, const int64_t*), P_(8, const int64_t*), P_(9, const int64_t*),
                P_(10, const int64_t*), P_(11, const uint8_t*), P_(12, const int64_t*),
                P_(13, const uint8_t*), P_(14, const int64_t*), a[15],
                a[16], P_(17, const int64_t*), P_(18, const int64_t*), P_(19, const int64_t*), P_(20, const int64_t*),
                P_(21, const uint8_t*), P_(22, const int64_t*), P_(23, const uint8_t*),
                P_(24, double*), P_(25, int64_t*), P_(26, int64_t*), P_(27, uint8_t*),
                P_(28, int64_t*), P_(29, int64_t*), P_(30, int64_t*),
                P_(31, uint8_t*), a[32], P_(33, int64_t*), P_(34, int64_t*), P_(35, int64_t*),
                P_(36, const uint8_t*), P_(37, const int64_t*), P_(38, int64_t*),
                P_(39, void*), P_(40, const uint8_t*), P_(41, const int64_t*), P_(42, const int64_t*));
#undef P_
}

/* Encode-decode round trip through the C structures (tests: the C and Python codecs agree). */
int64_t fs_roundtrip(const int64_t* cfg, int64_t ns_i, const uint8_t* blob, int64_t len,
                     uint8_t* out_buf, int64_t out_cap, int64_t* out_len) {
  Ctx* C = (Ctx*)calloc(1, sizeof(Ctx));
  if (C == NULL) return R_NOMEM;
  volatile int64_t rc = R_OK;
  C->ar.oom = &C->oom; C->scr.oom = &C->oom;
  if (setjmp(C->oom)) { rc = R_NOMEM; goto done; }
  {
  { int r = parse_cfg(C, cfg); if (r) { rc = r; goto done; } }
  Ent E;
  memset(&E, 0, sizeof(E));
  E.ns = (int32_t)ns_i;
  int r = parse_ent(C, &E, blob, len);
  if (r) { rc = r; goto done; }
  C->stamp = (int64_t*)azalloc(&C->ar, sizeof(int64_t) * (C->ng + 1));
  C->local = (int64_t*)azalloc(&C->ar, sizeof(int64_t) * (C->ng + 1));
  Out o = {out_buf, out_cap, 0, 0, 0};
  encode(C, &E, &o);
  *out_len = o.pos;
  if (o.overflow) rc = R_OUT_SMALL;
  }
done:
  afree(&C->ar); afree(&C->scr);
  free(C);
  return rc;
}
"""
