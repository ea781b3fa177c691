/*
 * cachem_files.c - ownership of the files mod_cachem makes. A server
 * started as root runs its children as User/Group: the region and lockfile
 * must be theirs before anyone uses them. prepare_path creates a file or
 * directory with the region's mode and owner, never through a symlink.
 * (Owner names live in the region since issue 22: there is no id store.)
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
