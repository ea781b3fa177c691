/*
 * cachem_files.c - ownership of the files mod_cachem makes. A server
 * started as root runs its children as User/Group: the region, lockfile
 * and id store must be theirs before anyone uses them. prepare_path
 * creates a file or directory with the region's mode and owner; chown_tree
 * gives a directory tree (the id store) away. Both walk by descriptors and
 * never follow a symlink.
 */
#include "mod_cachem_private.h"

/* Pre-creates a file or directory the children (another user) must be able
 * to use, with the mode and owner the region gets. Best effort; failures
 * show up, logged, when the children use them. */
void prepare_path(server_rec *s, const char *path, int dir, const cachem_state *st)
{
    int fd;
    /* Never through a symlink at the last component: the directory may be
     * writable by the children's user, and root must not create or chown
     * a file a link points to. */
    if (dir) {
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s, "mod_cachem: cannot create %s", path);
            return;
        }
        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    else
        fd = open(path, O_CREAT | O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, st->mode);
    if (fd < 0) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s,
                     "mod_cachem: cannot create or open %s (a symlink is refused)", path);
        return;
    }
    /* The umask filtered the mode given to open and mkdir: set it exactly
     * (a directory gets the x bits of the classes that may use the files),
     * so CACHEMMode 0660 lets the group use the lockfile and the id store. */
    {
        mode_t m = (mode_t)st->mode;
        if (dir)
            m = 0700 | ((st->mode & 0060) ? 0070 : 0) | ((st->mode & 0006) ? 0007 : 0);
        if (fchmod(fd, m) != 0)
            ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s, "mod_cachem: cannot chmod %s", path);
    }
    if ((st->uid >= 0 || st->gid >= 0) && fchown(fd, (uid_t)st->uid, (gid_t)st->gid) != 0)
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s,
                     "mod_cachem: cannot give %s to uid %" APR_INT64_T_FMT, path, st->uid);
    close(fd);
}

/* Gives name (relative to the directory at) and, for a directory,
 * everything below it to the children's user. Walks by descriptors and
 * never follows a symlink, so a user who can write inside the tree cannot
 * swap a directory for a link and have root chown what it points to. */
static void chown_at(server_rec *s, int at, const char *name, const cachem_state *st, int depth)
{
    struct stat sb;
    int fd = openat(at, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return; /* gone, or a symlink (ELOOP): leave it */
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return;
    }
    if (fchown(fd, (uid_t)st->uid, (gid_t)st->gid) != 0)
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s, "mod_cachem: cannot chown %s", name);
    if (S_ISDIR(sb.st_mode) && depth < 8) {
        DIR *d = fdopendir(fd);
        struct dirent *de;
        if (!d) {
            close(fd);
            return;
        }
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                chown_at(s, dirfd(d), de->d_name, st, depth + 1);
        }
        closedir(d);
        return;
    }
    close(fd);
}

/* Gives a directory tree (the id store) to the children's user: the
 * parent's registry use (CACHEMPersist's restore) creates files as root. */
void chown_tree(server_rec *s, const char *path, const cachem_state *st, int depth)
{
    if (st->uid < 0 && st->gid < 0)
        return;
    chown_at(s, AT_FDCWD, path, st, depth);
}
