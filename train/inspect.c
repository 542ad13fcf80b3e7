/* inspect.c - see inspect.h. */
#define _POSIX_C_SOURCE 200809L
#include "inspect.h"

#include <errno.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "quant/safetensors.h"
#include "train/checkpoint.h"
#include "train/gguf.h"
#include "train/model_config.h"

static void human(double bytes, char *buf, size_t cap) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (bytes >= 1024 && i < 4) bytes /= 1024, i++;
    snprintf(buf, cap, i ? "%.2f %s" : "%.0f %s", bytes, u[i]);
}

static void shape_str(const int64_t *s, int n, char *buf, size_t cap) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, i ? ", %lld" : "%lld", (long long)s[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

static int inspect_safetensors(const char *path, FILE *out, qt_err *err) {
    qt_st_file f;
    char msg[512];
    if (qt_st_load_file(&f, path, msg, sizeof msg) != 0)
        return qt_err_set(err, QT_ERR_FORMAT, "%s", msg);
    double params = 0, bytes = 0;
    int nf4 = 0;
    fprintf(out, "%s: safetensors, %d tensors\n", path, f.ntensors);
    for (int i = 0; i < f.nmeta; i++)
        fprintf(out, "  metadata %s = %s\n", f.meta[i].key, f.meta[i].value);
    for (int i = 0; i < f.ntensors; i++) {
        const qt_st_tensor *t = &f.tensors[i];
        char sh[128];
        shape_str(t->shape, t->ndim, sh, sizeof sh);
        fprintf(out, "  %-60s %-5s %s\n", t->name, qt_st_dtype_name(t->dtype), sh);
        params += (double)qt_st_numel(t);
        bytes += (double)(t->end - t->begin);
        nf4 += strstr(t->name, ".quant_state.bitsandbytes__nf4") != NULL;
    }
    char hb[32];
    human(bytes, hb, sizeof hb);
    fprintf(out, "total: %.0f elements, %s of tensor data", params, hb);
    if (nf4) fprintf(out, ", %d bitsandbytes NF4 weights", nf4);
    fprintf(out, "\n");
    qt_st_free(&f);
    return QT_OK;
}

static int inspect_gguf(const char *path, FILE *out, qt_err *err) {
    qt_gguf_file f;
    int rc = qt_gguf_open(&f, path, err);
    if (rc) return rc;
    fprintf(out, "%s: GGUF v%u, %llu metadata keys, %llu tensors, alignment %u\n", path, f.version,
            (unsigned long long)f.nkv, (unsigned long long)f.ntensors, f.alignment);
    char buf[256];
    for (uint64_t i = 0; i < f.nkv; i++)
        fprintf(out, "  %-45s %-7s %s\n", f.kv[i].key, qt_gguf_vtype_name(f.kv[i].type),
                qt_gguf_kv_str(&f.kv[i], buf, sizeof buf));
    double bytes = 0, elems = 0;
    for (uint64_t i = 0; i < f.ntensors; i++) {
        const qt_gguf_tensor *t = &f.tensors[i];
        int64_t s[4];
        double n = 1;
        for (uint32_t d = 0; d < t->ndim; d++) s[d] = (int64_t)t->dims[d], n *= (double)s[d];
        shape_str(s, (int)t->ndim, buf, sizeof buf);
        fprintf(out, "  %-45s %-5s %s\n", t->name, qt_ggml_type_name(t->type), buf);
        bytes += (double)t->nbytes, elems += n;
    }
    human(bytes, buf, sizeof buf);
    fprintf(out, "total: %.0f elements, %s of tensor data (%.3f bits per element)\n", elems, buf,
            elems > 0 ? bytes * 8 / elems : 0.0);
    qt_gguf_close(&f);
    return QT_OK;
}

static herr_t list_tensor(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    FILE *out = data;
    (void)info;
    hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
    if (d < 0) return 0;
    hid_t sp = H5Dget_space(d);
    hsize_t dims[8] = {0};
    int nd = H5Sget_simple_extent_dims(sp, dims, NULL);
    int64_t s[8];
    for (int i = 0; i < nd && i < 8; i++) s[i] = (int64_t)dims[i];
    char sh[128], dt[16] = "?";
    shape_str(s, nd, sh, sizeof sh);
    if (H5Aexists(d, "dtype") > 0) {
        hid_t a = H5Aopen(d, "dtype", H5P_DEFAULT), t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        char *v = NULL;
        if (H5Aread(a, t, &v) >= 0 && v) snprintf(dt, sizeof dt, "%s", v), H5free_memory(v);
        H5Tclose(t);
        H5Aclose(a);
    }
    fprintf(out, "  %-60s %-5s %s\n", name, dt, sh);
    H5Sclose(sp);
    H5Dclose(d);
    return 0;
}

static int inspect_checkpoint(const char *path, FILE *out, qt_err *err) {
    qt_ckpt_info info;
    int rc = qt_ckpt_read_info(path, &info, err);
    if (rc) return rc;
    fprintf(out,
            "%s: qtune checkpoint, format %d\n  step %lld, epoch %lld\n  base model %s "
            "(identity %s)\n",
            path, info.format_version, (long long)info.step, (long long)info.epoch,
            info.base_model_path, info.base_model_hash);
    static const char *kinds[] = {"constant", "constant_with_warmup", "linear", "cosine"};
    fprintf(out, "  schedule %s, lr %g, warmup %lld, total %lld\n",
            info.sched.kind <= QT_SCHED_COSINE ? kinds[info.sched.kind] : "?", info.sched.lr,
            (long long)info.sched.warmup, (long long)info.sched.total);
    H5E_auto2_t fn;
    void *fd;
    H5Eget_auto2(H5E_DEFAULT, &fn, &fd);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f >= 0) {
        hid_t g = H5Gopen2(f, "tensors", H5P_DEFAULT);
        if (g >= 0) {
            fprintf(out, "trainable tensors:\n");
            H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, list_tensor, out);
            H5Gclose(g);
        }
        H5Fclose(f);
    }
    H5Eset_auto2(H5E_DEFAULT, fn, fd);
    fprintf(out, "config:\n");
    for (const char *p = info.config_yaml; p && *p;) {
        const char *e = strchr(p, '\n');
        int n = e ? (int)(e - p) : (int)strlen(p);
        fprintf(out, "  | %.*s\n", n, p);
        p = e ? e + 1 : p + n;
    }
    qt_ckpt_info_free(&info);
    return QT_OK;
}

static int inspect_dir(const char *path, FILE *out, qt_err *err) {
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", path);
    qt_model_config c;
    int rc = qt_model_config_load(&c, p, err);
    if (rc) return rc;
    fprintf(out,
            "%s: Hugging Face %s model: %lld layers, hidden %lld, ffn %lld, heads %lld/%lld "
            "(head_dim %lld), vocab %lld, rope theta %g%s%s\n",
            path, c.model_type, (long long)c.layers, (long long)c.hidden, (long long)c.ffn,
            (long long)c.heads, (long long)c.kv_heads, (long long)c.head_dim, (long long)c.vocab,
            c.rope_theta, c.rope.type == QT_ROPE_LLAMA3 ? " (llama3 scaling)" : "",
            c.tie_embeddings ? ", tied embeddings" : "");
    snprintf(p, sizeof p, "%s/model.safetensors", path);
    struct stat st;
    if (stat(p, &st) == 0) return inspect_safetensors(p, out, err);
    fprintf(out, "(sharded weights: see model.safetensors.index.json)\n");
    return QT_OK;
}

int qt_inspect(const char *path, FILE *out, qt_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) return qt_err_set(err, QT_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return inspect_dir(path, out, err);
    FILE *f = fopen(path, "rb");
    if (!f) return qt_err_set(err, QT_ERR_IO, "%s: %s", path, strerror(errno));
    unsigned char m[9] = {0};
    size_t n = fread(m, 1, 9, f);
    fclose(f);
    if (n >= 4 && !memcmp(m, "GGUF", 4)) return inspect_gguf(path, out, err);
    if (n >= 8 && !memcmp(m, "\x89HDF\r\n\x1a\n", 8)) return inspect_checkpoint(path, out, err);
    if (n >= 9 && m[8] == '{') return inspect_safetensors(path, out, err);
    return qt_err_set(err, QT_ERR_FORMAT,
                      "%s: not a file qtune knows (safetensors, GGUF, qtune checkpoint) nor a "
                      "model directory",
                      path);
}
