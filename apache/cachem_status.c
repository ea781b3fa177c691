/*
 * cachem_status.c - mod_cachem's section of mod_status's page
 * (/server-status) and of its ?auto form: the region's geometry and usage
 * picture, counters, and a row per owner and per inserting process. The
 * figures come from cachem_status (one struct) and the rows from
 * cachem_status_owners / cachem_status_pids (callbacks run with no cachem
 * lock held), so no JSON is parsed here.
 */
#include "mod_cachem_private.h"

typedef struct {
    request_rec *r;
    int short_form;
} status_ctx;

/* One owner's row (a cachem_status_owners callback; no cachem lock is
 * held, and the name is copied into the response before returning). */
static int status_owner(const cachem_owner_usage_t *u, void *c)
{
    status_ctx *ctx = c;
    request_rec *r = ctx->r;
    apr_uint64_t id = u->id;
    const char *name = u->name;
    if (ctx->short_form)
        ap_rprintf(r, "CachemOwner%" APR_UINT64_T_FMT ": %s %" APR_UINT64_T_FMT " %"
                   APR_UINT64_T_FMT "\n", id,
                   id == 0 ? "(process)" : (name ? name : "(unnamed)"),
                   (apr_uint64_t)u->records, (apr_uint64_t)u->bytes);
    else
        ap_rprintf(r, "<tr><td>%" APR_UINT64_T_FMT "</td><td>%s</td><td>%" APR_UINT64_T_FMT
                   "</td><td>%" APR_UINT64_T_FMT "</td></tr>\n", id,
                   id == 0 ? "<i>process-scoped</i>"
                           : (name ? ap_escape_html(r->pool, name) : "<i>unnamed</i>"),
                   (apr_uint64_t)u->records, (apr_uint64_t)u->bytes);
    return 0;
}

/* One process's row (a cachem_status_pids callback). */
static int status_pid(const cachem_pid_usage_t *u, void *c)
{
    status_ctx *ctx = c;
    request_rec *r = ctx->r;
    if (ctx->short_form)
        ap_rprintf(r, "CachemPid%" APR_UINT64_T_FMT ": %s %" APR_UINT64_T_FMT " %"
                   APR_UINT64_T_FMT "\n", (apr_uint64_t)u->pid, u->alive ? "alive" : "dead",
                   (apr_uint64_t)u->records, (apr_uint64_t)u->bytes);
    else
        ap_rprintf(r, "<tr><td>%" APR_UINT64_T_FMT "</td><td>%s</td><td>%" APR_UINT64_T_FMT
                   "</td><td>%" APR_UINT64_T_FMT "</td></tr>\n", (apr_uint64_t)u->pid,
                   u->alive ? "alive" : "<b>dead</b>", (apr_uint64_t)u->records,
                   (apr_uint64_t)u->bytes);
    return 0;
}

/* The owners' rows, then the processes' rows; a failure is logged (the
 * rows given so far stay). */
static void status_rows(status_ctx *ctx, int pids)
{
    cachem_error_t e = pids ? cachem_status_pids(g_cache, status_pid, ctx)
                            : cachem_status_owners(g_cache, status_owner, ctx);
    if (e != CACHEM_OK)
        fail(e, APLOG_ERR, "%s for server-status", pids ? "cachem_status_pids"
                                                        : "cachem_status_owners");
}

int cachem_status_section(request_rec *r, int flags)
{
    cachem_status_t stt = CACHEM_STATUS_INIT;
    cachem_error_t e;
    status_ctx ctx;
    const char *name;

    if (!g_cache) {
        if (!(flags & AP_STATUS_SHORT))
            ap_rputs("<hr />\n<h2>mod_cachem</h2>\n<p>No cache in this process.</p>\n", r);
        else
            ap_rputs("CachemAvailable: 0\n", r);
        return OK;
    }
    e = cachem_status(g_cache, &stt);
    if (e != CACHEM_OK) {
        fail(e, APLOG_ERR, "cachem_status for server-status");
        if (!(flags & AP_STATUS_SHORT))
            ap_rprintf(r, "<hr />\n<h2>mod_cachem</h2>\n<p>Status failed: %s</p>\n",
                       ap_escape_html(r->pool, cachem_strerror(e)));
        else
            ap_rputs("CachemAvailable: 0\n", r);
        return OK;
    }
    ctx.r = r;
    ctx.short_form = (flags & AP_STATUS_SHORT) != 0;
    name = g_state && g_state->path ? g_state->path : "(anonymous)";

    if (ctx.short_form) {
        ap_rputs("CachemAvailable: 1\n", r);
        ap_rprintf(r, "CachemRegion: %s\n", name);
        ap_rprintf(r, "CachemSize: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.size);
        ap_rprintf(r, "CachemUsedBytes: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.used_bytes);
        ap_rprintf(r, "CachemFreeBytes: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.free_bytes);
        ap_rprintf(r, "CachemRecords: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.records);
        ap_rprintf(r, "CachemSlots: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.slots);
        ap_rprintf(r, "CachemFreeSlots: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.free_slots);
        ap_rprintf(r, "CachemHeaderBytes: %" APR_UINT64_T_FMT "\n",
                   (apr_uint64_t)stt.header_bytes);
        ap_rprintf(r, "CachemTableBytes: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.table_bytes);
        ap_rprintf(r, "CachemGeneration: %016" APR_UINT64_T_HEX_FMT "\n",
                   (apr_uint64_t)stt.generation);
        ap_rprintf(r, "CachemMaxRecordLen: %" APR_UINT64_T_FMT "\n",
                   (apr_uint64_t)stt.max_record_len);
        ap_rprintf(r, "CachemOwners: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.owners);
        ap_rprintf(r, "CachemProcesses: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.processes);
        /* The alert: dead processes with records a reap removes. */
        ap_rprintf(r, "CachemDeadProcesses: %" APR_UINT64_T_FMT "\n",
                   (apr_uint64_t)stt.dead_processes);
        /* Information: dead pids that only tag kept (owned) records. */
        ap_rprintf(r, "CachemDeadPidsKept: %" APR_UINT64_T_FMT "\n",
                   (apr_uint64_t)stt.dead_pids_kept);
        ap_rprintf(r, "CachemInserts: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.inserts);
        ap_rprintf(r, "CachemRemoves: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.removes);
        ap_rprintf(r, "CachemBytesMoved: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.bytes_moved);
        ap_rprintf(r, "CachemReaps: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.reaped_records);
        ap_rprintf(r, "CachemRecoveries: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.recoveries);
        ap_rprintf(r, "CachemCompaction: %s\n",
                   stt.compaction == CACHEM_COMPACTION_EAGER ? "eager" : "deferred");
        ap_rprintf(r, "CachemDeadBytes: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.dead_bytes);
        ap_rprintf(r, "CachemDeadBlocks: %" APR_UINT64_T_FMT "\n", (apr_uint64_t)stt.dead_blocks);
        status_rows(&ctx, 0);
        status_rows(&ctx, 1);
        return OK;
    }

    ap_rputs("<hr />\n<h2><a name=\"cachem\">mod_cachem</a></h2>\n", r);
    ap_rprintf(r, "<p>Region <code>%s</code>: %" APR_UINT64_T_FMT " bytes, %"
               APR_UINT64_T_FMT " used, %" APR_UINT64_T_FMT " free; %" APR_UINT64_T_FMT
               " records in %" APR_UINT64_T_FMT " slots; largest record %" APR_UINT64_T_FMT
               " bytes.</p>\n", ap_escape_html(r->pool, name), (apr_uint64_t)stt.size,
               (apr_uint64_t)stt.used_bytes, (apr_uint64_t)stt.free_bytes,
               (apr_uint64_t)stt.records, (apr_uint64_t)stt.slots,
               (apr_uint64_t)stt.max_record_len);
    {
        /* The region picture: | header | blocks -> | free | <- table |. */
        char bar[65];
        int i, hdr, used, freec;
        double sz = stt.size ? (double)stt.size : 1.0;
        hdr = (int)(64.0 * (double)stt.header_bytes / sz + 0.5);
        used = (int)(64.0 * (double)stt.used_bytes / sz + 0.5);
        freec = (int)(64.0 * (double)stt.free_bytes / sz + 0.5);
        if (hdr < 1)
            hdr = 1;
        if (used < 1 && stt.records)
            used = 1;
        if (hdr + used > 64)
            used = 64 - hdr;
        if (hdr + used + freec > 64)
            freec = 64 - hdr - used;
        for (i = 0; i < 64; i++)
            bar[i] = i < hdr ? 'H' : (i < hdr + used ? '#' : (i < hdr + used + freec ? '.' : '='));
        bar[64] = 0;
        ap_rprintf(r, "<pre>|%s|\n H header %" APR_UINT64_T_FMT ", # records %" APR_UINT64_T_FMT
                   ", . free %" APR_UINT64_T_FMT ", = block-pointer table %" APR_UINT64_T_FMT
                   " bytes</pre>\n", bar, (apr_uint64_t)stt.header_bytes,
                   (apr_uint64_t)stt.used_bytes, (apr_uint64_t)stt.free_bytes,
                   (apr_uint64_t)stt.table_bytes);
    }
    ap_rprintf(r, "<p>Compaction %s: %" APR_UINT64_T_FMT " bytes in %" APR_UINT64_T_FMT
               " deleted records' blocks wait for a compaction.</p>\n",
               stt.compaction == CACHEM_COMPACTION_EAGER ? "eager" : "deferred",
               (apr_uint64_t)stt.dead_bytes, (apr_uint64_t)stt.dead_blocks);
    ap_rprintf(r, "<p>Counters: %" APR_UINT64_T_FMT " inserts, %" APR_UINT64_T_FMT
               " removes, %" APR_UINT64_T_FMT " bytes moved by compaction, %"
               APR_UINT64_T_FMT " records reaped, %" APR_UINT64_T_FMT
               " lock recoveries.</p>\n", (apr_uint64_t)stt.inserts, (apr_uint64_t)stt.removes,
               (apr_uint64_t)stt.bytes_moved, (apr_uint64_t)stt.reaped_records,
               (apr_uint64_t)stt.recoveries);
    {
        ap_rprintf(r, "<h3>Owners (%" APR_UINT64_T_FMT ")</h3>\n<table border=\"0\">"
                   "<tr><th>id</th><th>name</th><th>records</th><th>bytes</th></tr>\n",
                   (apr_uint64_t)stt.owners);
        status_rows(&ctx, 0);
        ap_rputs("</table>\n", r);
        ap_rprintf(r, "<h3>Processes (%" APR_UINT64_T_FMT " alive, %" APR_UINT64_T_FMT
                   " dead with records to reap, %" APR_UINT64_T_FMT
                   " dead with kept records only)</h3>\n<table border=\"0\">"
                   "<tr><th>pid</th><th>state</th><th>records</th><th>bytes</th></tr>\n",
                   (apr_uint64_t)(stt.processes - stt.dead_processes - stt.dead_pids_kept),
                   (apr_uint64_t)stt.dead_processes, (apr_uint64_t)stt.dead_pids_kept);
        status_rows(&ctx, 1);
        ap_rputs("</table>\n", r);
    }
    return OK;
}
