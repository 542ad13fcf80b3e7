/* checkpoint.c - see checkpoint.h and docs/FORMATS.md. HDF5 1.10 C API. */
#define _POSIX_C_SOURCE 200809L
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train/gguf_model.h"

#define QT_CKPT_MAGIC "qtune-checkpoint"
#define N_I64         11
#define N_F64         6
#define N_OPTS        27

uint64_t qt_fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

void qt_ckpt_info_free(qt_ckpt_info *info) {
    free(info->config_yaml);
    free(info->loader_state);
    info->config_yaml = NULL;
    info->loader_state = NULL;
    info->loader_state_len = 0;
}

/* HDF5 prints its own error stack by default; qtune reports errors itself. */
typedef struct {
    H5E_auto2_t fn;
    void *data;
} h5_quiet;

static h5_quiet quiet_begin(void) {
    h5_quiet q;
    H5Eget_auto2(H5E_DEFAULT, &q.fn, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}

static void quiet_end(h5_quiet q) {
    H5Eset_auto2(H5E_DEFAULT, q.fn, q.data);
}

/* ---- writing -------------------------------------------------------------------------- */

static int attr_str(hid_t obj, const char *name, const char *value) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, t, &value);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return rc < 0 ? -1 : 0;
}

static int attr_i64(hid_t obj, const char *name, int64_t v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, &v);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc < 0 ? -1 : 0;
}

/* A chunked dataset with the Fletcher32 checksum. Chunks of at most ~4 MiB along dim 0. */
static int write_dataset(hid_t loc, const char *name, hid_t ftype, hid_t mtype, size_t esize,
                         int ndim, const int64_t *shape, const void *data, const char *dtype) {
    hsize_t dims[QT_MAX_DIMS] = {0}, chunk[QT_MAX_DIMS] = {0};
    size_t row = esize;
    for (int i = 0; i < ndim; i++) {
        dims[i] = chunk[i] = (hsize_t)shape[i];
        if (i) row *= (size_t)shape[i];
    }
    size_t rows = row ? ((size_t)4 << 20) / row : 1;
    if (rows < 1) rows = 1;
    if (chunk[0] > rows) chunk[0] = rows;
    for (int i = 0; i < ndim; i++)
        if (chunk[i] == 0) chunk[i] = 1;
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, ndim, chunk);
    H5Pset_fletcher32(dcpl);
    hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    herr_t rc = d < 0 ? -1 : H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (rc >= 0 && dtype) rc = attr_str(d, "dtype", dtype);
    if (d >= 0) H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(sp);
    return rc < 0 ? -1 : 0;
}

static int write_tensor(qt_ctx *ctx, hid_t grp, const qt_tensor *t) {
    void *host = malloc(qt_nbytes(t) ? qt_nbytes(t) : 1);
    if (!host) return -1;
    qt_tensor_download(ctx, t, host);
    int rc;
    if (t->dtype == QT_F32)
        rc = write_dataset(grp, t->name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, t->ndim, t->shape,
                           host, "f32");
    else if (t->dtype == QT_BF16 || t->dtype == QT_F16)
        rc = write_dataset(grp, t->name, H5T_STD_U16LE, H5T_NATIVE_UINT16, 2, t->ndim, t->shape,
                           host, qt_dtype_name(t->dtype));
    else if (t->dtype == QT_U8) /* 8-bit optimizer state codes */
        rc = write_dataset(grp, t->name, H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, t->ndim, t->shape, host,
                           qt_dtype_name(t->dtype));
    else
        rc = -1;
    free(host);
    return rc;
}

static int fsync_path(const char *path, int dir) {
    int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* the root attribute `optimizer`: the kind of AdamW state the file holds */
static const char *ckpt_optimizer_name(int bits) {
    return bits == 8 ? "adamw_8bit" : "adamw";
}

int qt_ckpt_save(const char *path, qt_ctx *ctx, const qt_ckpt_info *info, const qt_adamw *opt,
                 qt_err *err) {
    char tmp[4200];
    {
        char *d = strdup(path), *b = strdup(path);
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", dirname(d), basename(b), (long)getpid());
        free(d);
        free(b);
    }
    h5_quiet q = quiet_begin();
    int rc = QT_OK;
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        quiet_end(q);
        return qt_err_set(err, QT_ERR_IO, "%s: cannot create the checkpoint's temporary file %s",
                          path, tmp);
    }
    int bad = 0;
    bad |= attr_str(f, "format", QT_CKPT_MAGIC);
    bad |= attr_i64(f, "format_version", QT_CKPT_FORMAT_VERSION);
    bad |= attr_i64(f, "step", info->step);
    bad |= attr_str(f, "base_model_path", info->base_model_path);
    bad |= attr_str(f, "base_model_hash", info->base_model_hash);
    char when[32];
    time_t now = time(NULL);
    struct tm tmv;
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
    bad |= attr_str(f, "created", when);
    /* the optimizer's kind: resuming with the other one is refused (qt_ckpt_load) */
    if (opt) bad |= attr_str(f, "optimizer", ckpt_optimizer_name(opt->bits));

    int64_t si[N_I64] = {info->step,
                         info->epoch,
                         (int64_t)info->rng_seed,
                         (int64_t)info->rng_offset,
                         (int64_t)info->data_rng,
                         opt ? opt->step : 0,
                         info->sched.kind,
                         info->sched.warmup,
                         info->sched.total,
                         QT_CKPT_FORMAT_VERSION,
                         (int64_t)info->loader_state_len};
    double sf[N_F64] = {info->sched.lr,       info->sched.min_ratio, opt ? opt->beta1 : 0,
                        opt ? opt->beta2 : 0, opt ? opt->eps : 0,    opt ? opt->weight_decay : 0};
    int64_t ni = N_I64, nf = N_F64;
    bad |= write_dataset(f, "state_i64", H5T_STD_I64LE, H5T_NATIVE_INT64, 8, 1, &ni, si, NULL);
    bad |= write_dataset(f, "state_f64", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 8, 1, &nf, sf, NULL);
    {
        const qt_model_opts *o = &info->opts;
        const qt_fq_format *w = o->qat_weight, *a = o->qat_act;
        qt_fq_format none = {0};
        if (!w) w = &none;
        if (!a) a = &none;
        int64_t mi[N_OPTS] = {o->mode,
                              o->lora_r,
                              o->rslora,
                              o->lora_targets,
                              o->nf4_blocksize,
                              o->nf4_double_quant,
                              o->qat_lora,
                              o->checkpoint,
                              (int64_t)o->seed,
                              o->qat_weight != NULL,
                              w->kind,
                              w->bits,
                              w->symmetric,
                              w->granularity,
                              w->group,
                              w->scale_mode,
                              w->blocksize,
                              w->nf4_plain,
                              o->qat_act != NULL,
                              a->kind,
                              a->bits,
                              a->symmetric,
                              a->granularity,
                              a->group,
                              a->scale_mode,
                              a->blocksize,
                              a->nf4_plain};
        double mf[2] = {o->lora_alpha, o->lora_dropout};
        int64_t nmi = N_OPTS, nmf = 2;
        bad |= write_dataset(f, "model_opts_i64", H5T_STD_I64LE, H5T_NATIVE_INT64, 8, 1, &nmi, mi,
                             NULL);
        bad |= write_dataset(f, "model_opts_f64", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 8, 1, &nmf, mf,
                             NULL);
    }
    /* text and blobs as bytes with a trailing NUL, so that empty ones still have a chunk */
    const char *yaml = info->config_yaml ? info->config_yaml : "";
    int64_t ny = (int64_t)strlen(yaml) + 1;
    bad |= write_dataset(f, "config_yaml", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, 1, &ny, yaml, NULL);
    int64_t nl = (int64_t)info->loader_state_len + 1;
    uint8_t *ls = calloc((size_t)nl, 1);
    if (ls && info->loader_state_len) memcpy(ls, info->loader_state, info->loader_state_len);
    bad |= !ls ||
           write_dataset(f, "loader_state", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, 1, &nl, ls, NULL);
    free(ls);
    if (opt) {
        /* 8-bit AdamW: exp_avg / exp_avg_sq hold u8 codes, the absmax groups their scales */
        const char *groups[6] = {"tensors",    "masters",        "exp_avg",
                                 "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax"};
        hid_t g[6];
        int ng = opt->bits == 8 ? 6 : 4;
        for (int k = 0; k < ng; k++)
            g[k] = H5Gcreate2(f, groups[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        for (int i = 0; i < opt->n && !bad; i++) {
            const qt_adamw_slot *s = &opt->slot[i];
            bad |= write_tensor(ctx, g[0], s->param);
            if (s->master) {
                qt_tensor mt = *s->master;
                snprintf(mt.name, sizeof mt.name, "%s", s->param->name);
                bad |= write_tensor(ctx, g[1], &mt);
            }
            qt_tensor mt = s->m ? *s->m : *s->m8, vt = s->v ? *s->v : *s->v8;
            snprintf(mt.name, sizeof mt.name, "%s", s->param->name);
            snprintf(vt.name, sizeof vt.name, "%s", s->param->name);
            bad |= write_tensor(ctx, g[2], &mt);
            bad |= write_tensor(ctx, g[3], &vt);
            if (!s->m) {
                qt_tensor ma = *s->m_absmax, va = *s->v_absmax;
                snprintf(ma.name, sizeof ma.name, "%s", s->param->name);
                snprintf(va.name, sizeof va.name, "%s", s->param->name);
                bad |= write_tensor(ctx, g[4], &ma);
                bad |= write_tensor(ctx, g[5], &va);
            }
        }
        for (int k = 0; k < ng; k++)
            if (g[k] >= 0)
                H5Gclose(g[k]);
            else
                bad = 1;
    }
    if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) bad = 1;
    if (H5Fclose(f) < 0) bad = 1;
    quiet_end(q);
    if (bad) {
        unlink(tmp);
        return qt_err_set(err, QT_ERR_IO,
                          "%s: writing the checkpoint failed (disk full?); the "
                          "previous checkpoint is untouched",
                          path);
    }
    char *d = strdup(path);
    if (fsync_path(tmp, 0) != 0 || rename(tmp, path) != 0) {
        rc = qt_err_set(err, QT_ERR_IO, "%s: cannot move the checkpoint into place: %s", path,
                        strerror(errno));
        unlink(tmp);
    } else if (fsync_path(dirname(d), 1) != 0) {
        rc =
            qt_err_set(err, QT_ERR_IO, "%s: cannot fsync its directory: %s", path, strerror(errno));
    }
    free(d);
    return rc;
}

/* ---- reading -------------------------------------------------------------------------- */

static int read_attr_str(hid_t obj, const char *name, char *out, size_t cap) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t ft = H5Aget_type(a);
    int rc = -1;
    if (H5Tget_class(ft) == H5T_STRING) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        H5Tset_cset(t, H5T_CSET_UTF8);
        char *s = NULL;
        if (H5Tis_variable_str(ft) > 0 && H5Aread(a, t, &s) >= 0 && s) {
            snprintf(out, cap, "%s", s);
            H5free_memory(s);
            rc = 0;
        }
        H5Tclose(t);
    }
    H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

static int read_attr_i64(hid_t obj, const char *name, int64_t *v) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    int rc = H5Aread(a, H5T_NATIVE_INT64, v) < 0 ? -1 : 0;
    H5Aclose(a);
    return rc;
}

/* Reads a whole 1-D/N-D dataset; checks its shape when want_shape is given; *n = elements.
 * The Fletcher32 checksum is verified by HDF5 during H5Dread. */
static void *read_dataset(hid_t loc, const char *name, hid_t mtype, size_t esize, int want_ndim,
                          const int64_t *want_shape, int64_t *n, const char *path, qt_err *err) {
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) {
        qt_err_set(err, QT_ERR_FORMAT, "%s: dataset '%s' is missing", path, name);
        return NULL;
    }
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) {
        qt_err_set(err, QT_ERR_FORMAT, "%s: dataset '%s' cannot be opened (damaged file?)", path,
                   name);
        return NULL;
    }
    hid_t sp = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[8] = {0};
    if (nd < 0 || nd > 8) nd = 0;
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    int64_t cnt = 1;
    for (int i = 0; i < nd; i++) cnt *= (int64_t)dims[i];
    if (want_shape) {
        int same = nd == want_ndim;
        for (int i = 0; same && i < nd; i++) same = (int64_t)dims[i] == want_shape[i];
        if (!same) {
            char got[96] = "", want[96] = "";
            for (int i = 0; i < nd; i++)
                snprintf(got + strlen(got), sizeof got - strlen(got), i ? ", %llu" : "%llu",
                         (unsigned long long)dims[i]);
            for (int i = 0; i < want_ndim; i++)
                snprintf(want + strlen(want), sizeof want - strlen(want), i ? ", %lld" : "%lld",
                         (long long)want_shape[i]);
            qt_err_set(err, QT_ERR_FORMAT,
                       "%s: '%s' has shape [%s] but the job's tensor is [%s] (a different model "
                       "or adapter rank?)",
                       path, name, got, want);
            H5Dclose(d);
            return NULL;
        }
    }
    void *buf = malloc((size_t)(cnt ? cnt : 1) * esize);
    if (!buf || H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        qt_err_set(err, QT_ERR_FORMAT,
                   "%s: dataset '%s' fails its checksum or cannot be read: the file is damaged",
                   path, name);
        free(buf);
        H5Dclose(d);
        return NULL;
    }
    H5Dclose(d);
    *n = cnt;
    return buf;
}

static int open_checked(const char *path, hid_t *out, qt_ckpt_info *info, qt_err *err) {
    if (access(path, R_OK) != 0)
        return qt_err_set(err, QT_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    if (H5Fis_hdf5(path) <= 0)
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: not a qtune checkpoint (not an HDF5 file, or truncated)", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: cannot be opened as HDF5 (truncated?)", path);
    char magic[64] = "";
    int64_t ver = 0;
    if (read_attr_str(f, "format", magic, sizeof magic) != 0 || strcmp(magic, QT_CKPT_MAGIC)) {
        H5Fclose(f);
        return qt_err_set(err, QT_ERR_FORMAT,
                          "%s: an HDF5 file but not a qtune checkpoint (no format attribute '%s')",
                          path, QT_CKPT_MAGIC);
    }
    if (read_attr_i64(f, "format_version", &ver) != 0 || ver < 1) {
        H5Fclose(f);
        return qt_err_set(err, QT_ERR_FORMAT, "%s: damaged: no valid format_version", path);
    }
    if (ver > QT_CKPT_FORMAT_VERSION) {
        H5Fclose(f);
        return qt_err_set(err, QT_ERR_UNSUPPORTED,
                          "%s: checkpoint format version %lld is newer than this qtune reads "
                          "(%d): upgrade qtune",
                          path, (long long)ver, QT_CKPT_FORMAT_VERSION);
    }
    memset(info, 0, sizeof *info);
    info->format_version = (int)ver;
    read_attr_str(f, "base_model_path", info->base_model_path, sizeof info->base_model_path);
    read_attr_str(f, "base_model_hash", info->base_model_hash, sizeof info->base_model_hash);
    int64_t n;
    int64_t *si = read_dataset(f, "state_i64", H5T_NATIVE_INT64, 8, 0, NULL, &n, path, err);
    double *sf =
        si ? read_dataset(f, "state_f64", H5T_NATIVE_DOUBLE, 8, 0, NULL, &n, path, err) : NULL;
    if (!si || !sf) {
        free(si);
        H5Fclose(f);
        return err ? err->code : QT_ERR_FORMAT;
    }
    info->step = si[0], info->epoch = si[1];
    info->rng_seed = (uint64_t)si[2], info->rng_offset = (uint64_t)si[3];
    info->data_rng = (uint64_t)si[4];
    info->sched.kind = (qt_sched_kind)si[6], info->sched.warmup = si[7], info->sched.total = si[8];
    info->sched.lr = sf[0], info->sched.min_ratio = sf[1];
    int64_t loader_len = si[10];
    free(si);
    free(sf);
    int64_t *mi = read_dataset(f, "model_opts_i64", H5T_NATIVE_INT64, 8, 0, NULL, &n, path, err);
    double *mf = mi && n == N_OPTS ? read_dataset(f, "model_opts_f64", H5T_NATIVE_DOUBLE, 8, 0,
                                                  NULL, &n, path, err)
                                   : NULL;
    if (!mi || !mf || n != 2) {
        free(mi);
        free(mf);
        H5Fclose(f);
        return err && err->code ? (int)err->code
                                : qt_err_set(err, QT_ERR_FORMAT, "%s: bad model options", path);
    }
    {
        qt_model_opts *o = &info->opts;
        o->mode = (qt_train_mode)mi[0], o->lora_r = (int)mi[1], o->rslora = mi[2];
        o->lora_targets = (unsigned)mi[3], o->nf4_blocksize = (int)mi[4];
        o->nf4_double_quant = mi[5], o->qat_lora = mi[6], o->checkpoint = mi[7];
        o->seed = (uint64_t)mi[8];
        o->lora_alpha = mf[0], o->lora_dropout = mf[1];
        qt_fq_format *fw = &info->qat_weight, *fa = &info->qat_act;
        *fw = (qt_fq_format){.kind = (qt_fq_kind)mi[10],
                             .bits = (int)mi[11],
                             .symmetric = (int)mi[12],
                             .granularity = (qt_fq_granularity)mi[13],
                             .group = (int)mi[14],
                             .scale_mode = (qt_fq_scale_mode)mi[15],
                             .blocksize = (int)mi[16],
                             .nf4_plain = (int)mi[17]};
        *fa = (qt_fq_format){.kind = (qt_fq_kind)mi[19],
                             .bits = (int)mi[20],
                             .symmetric = (int)mi[21],
                             .granularity = (qt_fq_granularity)mi[22],
                             .group = (int)mi[23],
                             .scale_mode = (qt_fq_scale_mode)mi[24],
                             .blocksize = (int)mi[25],
                             .nf4_plain = (int)mi[26]};
        o->qat_weight = mi[9] ? fw : NULL;
        o->qat_act = mi[18] ? fa : NULL;
    }
    free(mi);
    free(mf);
    info->config_yaml = read_dataset(f, "config_yaml", H5T_NATIVE_UINT8, 1, 0, NULL, &n, path, err);
    if (!info->config_yaml || n < 1 || info->config_yaml[n - 1] != 0) {
        qt_ckpt_info_free(info);
        H5Fclose(f);
        return err && err->code ? (int)err->code
                                : qt_err_set(err, QT_ERR_FORMAT, "%s: bad config", path);
    }
    info->loader_state =
        read_dataset(f, "loader_state", H5T_NATIVE_UINT8, 1, 0, NULL, &n, path, err);
    if (!info->loader_state || n != loader_len + 1) {
        qt_ckpt_info_free(info);
        H5Fclose(f);
        return err && err->code ? (int)err->code
                                : qt_err_set(err, QT_ERR_FORMAT, "%s: bad loader state", path);
    }
    info->loader_state_len = (size_t)loader_len;
    *out = f;
    return QT_OK;
}

int qt_ckpt_read_info(const char *path, qt_ckpt_info *info, qt_err *err) {
    h5_quiet q = quiet_begin();
    hid_t f;
    int rc = open_checked(path, &f, info, err);
    if (rc == QT_OK) H5Fclose(f);
    quiet_end(q);
    return rc;
}

static int read_tensor(qt_ctx *ctx, hid_t f, const char *group, qt_tensor *t, const char *name,
                       const char *path, qt_err *err) {
    char full[160];
    snprintf(full, sizeof full, "%s/%s", group, name);
    if (H5Lexists(f, group, H5P_DEFAULT) <= 0)
        return qt_err_set(err, QT_ERR_FORMAT, "%s: group '%s' is missing", path, group);
    char dt[16] = "";
    if (H5Lexists(f, full, H5P_DEFAULT) > 0) { /* the stored dtype first: no converting read */
        hid_t d = H5Dopen2(f, full, H5P_DEFAULT);
        read_attr_str(d, "dtype", dt, sizeof dt);
        H5Dclose(d);
        if (strcmp(dt, qt_dtype_name(t->dtype)) != 0) {
            bool state = !strncmp(group, "exp_avg", 7);
            return qt_err_set(err, QT_ERR_FORMAT,
                              state ? "%s: optimizer state '%s' is stored as %s, the job keeps %s "
                                      "(32-bit AdamW and adamw_8bit checkpoints do not mix)"
                                    : "%s: '%s' is stored as %s, the job trains it as %s",
                              path, full, dt[0] ? dt : "?", qt_dtype_name(t->dtype));
        }
    }
    size_t es = qt_dtype_size(t->dtype);
    hid_t nat = t->dtype == QT_F32  ? H5T_NATIVE_FLOAT
                : t->dtype == QT_U8 ? H5T_NATIVE_UINT8
                                    : H5T_NATIVE_UINT16;
    int64_t n;
    void *buf = read_dataset(f, full, nat, es, t->ndim, t->shape, &n, path, err);
    if (!buf) return err->code;
    qt_tensor_upload(ctx, t, buf);
    free(buf);
    return QT_OK;
}

/* every stored tensor must belong to the job: a different adapter set is not a resume */
static int check_tensor_count(hid_t f, int n, const char *path, qt_err *err) {
    hid_t g = H5Gopen2(f, "tensors", H5P_DEFAULT);
    H5G_info_t gi;
    int rc = QT_OK;
    if (g < 0 || H5Gget_info(g, &gi) < 0)
        rc = qt_err_set(err, QT_ERR_FORMAT, "%s: the group 'tensors' is missing", path);
    else if ((int)gi.nlinks != n)
        rc = qt_err_set(err, QT_ERR_FORMAT,
                        "%s: holds %d trainable tensors, the job trains %d (a different adapter "
                        "or target modules?)",
                        path, (int)gi.nlinks, n);
    if (g >= 0) H5Gclose(g);
    return rc;
}

int qt_ckpt_load(const char *path, qt_ctx *ctx, qt_ckpt_info *info, qt_adamw *opt, qt_err *err) {
    h5_quiet q = quiet_begin();
    hid_t f;
    int rc = open_checked(path, &f, info, err);
    if (rc) {
        quiet_end(q);
        return rc;
    }
    /* 32-bit and 8-bit AdamW states do not convert into each other. Checkpoints written before
     * the attribute existed are 32-bit, or 8-bit with u8 moments that read_tensor refuses. */
    char kind[32] = "";
    if (read_attr_str(f, "optimizer", kind, sizeof kind) == 0 &&
        strcmp(kind, ckpt_optimizer_name(opt->bits)) != 0) {
        H5Fclose(f);
        quiet_end(q);
        qt_ckpt_info_free(info);
        bool k8 = !strcmp(kind, "adamw_8bit");
        return qt_err_set(err, QT_ERR_ARG,
                          "%s: its attribute 'optimizer' is '%s' (%s state), this job's optimizer "
                          "is %s: 32-bit AdamW and adamw_8bit checkpoints do not mix (set "
                          "optimizer: %s to resume it, or start a new run)",
                          path, kind, k8 ? "8-bit AdamW" : "32-bit AdamW",
                          opt->bits == 8 ? "8-bit AdamW (adamw_8bit)" : "32-bit AdamW",
                          k8 ? "adamw_8bit" : "adamw_torch");
    }
    int64_t n;
    int64_t *si = read_dataset(f, "state_i64", H5T_NATIVE_INT64, 8, 0, NULL, &n, path, err);
    if (!si) rc = err->code;
    for (int i = 0; !rc && i < opt->n; i++) {
        qt_adamw_slot *s = &opt->slot[i];
        const char *nm = s->param->name;
        if ((rc = read_tensor(ctx, f, "tensors", s->param, nm, path, err)) ||
            (s->master && (rc = read_tensor(ctx, f, "masters", s->master, nm, path, err))) ||
            (rc = read_tensor(ctx, f, "exp_avg", s->m ? s->m : s->m8, nm, path, err)) ||
            (rc = read_tensor(ctx, f, "exp_avg_sq", s->v ? s->v : s->v8, nm, path, err)) ||
            (!s->m && (rc = read_tensor(ctx, f, "exp_avg_absmax", s->m_absmax, nm, path, err))) ||
            (!s->m && (rc = read_tensor(ctx, f, "exp_avg_sq_absmax", s->v_absmax, nm, path, err))))
            break;
        qt_grad_zero(s->param);
    }
    if (!rc) {
        rc = check_tensor_count(f, opt->n, path, err);
        opt->step = si[5];
    }
    free(si);
    H5Fclose(f);
    quiet_end(q);
    if (rc) qt_ckpt_info_free(info);
    return rc;
}

int qt_ckpt_load_tensors(const char *path, qt_ctx *ctx, qt_ckpt_info *info, qt_tensor **params,
                         int n, qt_err *err) {
    h5_quiet q = quiet_begin();
    hid_t f;
    int rc = open_checked(path, &f, info, err);
    if (rc) {
        quiet_end(q);
        return rc;
    }
    for (int i = 0; !rc && i < n; i++)
        rc = read_tensor(ctx, f, "tensors", params[i], params[i]->name, path, err);
    if (!rc) rc = check_tensor_count(f, n, path, err);
    H5Fclose(f);
    quiet_end(q);
    if (rc) qt_ckpt_info_free(info);
    return rc;
}

/* a base model: a Hugging Face directory or a GGUF file */
static int load_base(qt_ctx *ctx, qt_llama *m, const char *path, const qt_model_opts *o,
                     qt_err *err) {
    if (qt_gguf_is_file(path)) return qt_llama_load_gguf(ctx, m, path, o, err);
    return qt_llama_load(ctx, m, path, o, err);
}

int qt_model_open(qt_ctx *ctx, qt_llama *m, const char *path, char *base_dir, size_t cap,
                  qt_err *err) {
    struct stat st;
    if (stat(path, &st) != 0)
        return qt_err_set(err, QT_ERR_IO, "%s: no such model directory, checkpoint or GGUF file",
                          path);
    size_t plen = strlen(path);
    bool gguf_name = plen >= 5 && !strcmp(path + plen - 5, ".gguf");
    if (!S_ISDIR(st.st_mode) && (gguf_name || qt_gguf_is_file(path))) {
        /* a GGUF file (by its magic; one named .gguf without it is reported as damaged) */
        qt_model_opts o = qt_model_opts_default();
        o.mode = QT_MODE_FULL, o.checkpoint = false, o.frozen = true;
        o.compute = qt_device_compute_dtype(ctx->device);
        snprintf(base_dir, cap, "%s", path);
        return qt_llama_load_gguf(ctx, m, path, &o, err);
    }
    if (S_ISDIR(st.st_mode)) {
        char cfg[4200];
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        if (stat(cfg, &st) != 0)
            return qt_err_set(err, QT_ERR_IO,
                              "%s: has no config.json: not a Hugging Face model directory", path);
        qt_model_opts o = qt_model_opts_default();
        o.mode = QT_MODE_FULL, o.checkpoint = false, o.frozen = true;
        o.compute = qt_device_compute_dtype(ctx->device);
        snprintf(base_dir, cap, "%s", path);
        return qt_llama_load(ctx, m, path, &o, err);
    }
    qt_ckpt_info info;
    int rc = qt_ckpt_read_info(path, &info, err);
    if (rc) return rc;
    qt_model_opts o = info.opts;
    o.qat_weight = o.qat_weight ? &info.qat_weight : NULL;
    o.qat_act = o.qat_act ? &info.qat_act : NULL;
    o.checkpoint = false;
    o.lora_dropout = 0; /* evaluation */
    o.compute = qt_device_compute_dtype(ctx->device);
    snprintf(base_dir, cap, "%s", info.base_model_path);
    rc = load_base(ctx, m, info.base_model_path, &o, err);
    if (rc) {
        char inner[sizeof err->msg];
        snprintf(inner, sizeof inner, "%s", err->msg);
        qt_err_set(err, (qt_err_code)rc, "%s: its base model: %s", path, inner);
        qt_ckpt_info_free(&info);
        return rc;
    }
    if (strcmp(m->identity, info.base_model_hash) != 0) {
        rc = qt_err_set(err, QT_ERR_FORMAT,
                        "%s: was trained on a different base model than the one now at %s "
                        "(identity %s, now %s)",
                        path, info.base_model_path, info.base_model_hash, m->identity);
    } else {
        qt_ckpt_info_free(&info);
        rc = qt_ckpt_load_tensors(path, ctx, &info, m->train, m->n_train, err);
    }
    qt_ckpt_info_free(&info);
    if (rc) qt_llama_free(m);
    return rc;
}
