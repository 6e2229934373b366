#!/usr/bin/env python3
"""Builds the README's example against the installed library, as a user would.

Usage: install_test.py MESON BUILD_DIR SOURCE_ROOT README.md CXX [CXX_ARGS...]

Installs the build's development files (library, headers, pkg-config file;
`meson install --tags devel`) into a temporary DESTDIR, checks that every
public header of the source tree is installed, and compiles and links the
README's example with `CXX -std=c++20 -Wall -Wextra -Werror` and the flags
`pkg-config --cflags --libs dogpile` gives for that DESTDIR
(PKG_CONFIG_SYSROOT_DIR). Only the installed headers are on the include
path, so a header left out of install_headers, or a warning a user's
stricter flags raise in one (-Wmissing-field-initializers for an option
struct built with designated initializers), fails here. The program is
then run.

The guide's examples are not built here: each costs a compile as long as the
README's, and the build already compiles them with the same warnings
(warning_level=2, werror) against the same headers, which the header check
shows are all installed.

The library must be built (`meson install --no-rebuild`); tests/meson.build
makes the test depend on it.
"""
import glob
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import extract_readme_example  # noqa: E402

TIMEOUT_S = 300
CXXFLAGS = ["-std=c++20", "-Wall", "-Wextra", "-Werror"]
# Where the public headers live in the source tree (installed as <dogpile/...>).
HEADER_DIRS = ["engine/include/dogpile", "serialization/include/dogpile"]


def fail(message):
    sys.stderr.write("install_test: %s\n" % message)
    sys.exit(1)


def run(args, **kwargs):
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)
    if r.returncode != 0:
        fail("%s exited %d\n%s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
    return r.stdout


def install(meson, build_dir, destdir):
    run([meson, "install", "-C", build_dir, "--destdir", destdir, "--no-rebuild", "--quiet",
         "--tags", "devel"])
    pcs = glob.glob(os.path.join(destdir, "**", "pkgconfig", "dogpile.pc"), recursive=True)
    if len(pcs) != 1:
        fail("expected one installed dogpile.pc under %s, found %s" % (destdir, pcs or "none"))
    headers = glob.glob(os.path.join(destdir, "**", "include", "dogpile"), recursive=True)
    if len(headers) != 1:
        fail("expected one installed include/dogpile under %s, found %s"
             % (destdir, headers or "none"))
    return os.path.dirname(pcs[0]), headers[0]


def check_headers(source_root, installed_dir):
    public = set()
    for d in HEADER_DIRS:
        public.update(os.path.basename(p) for p in glob.glob(os.path.join(source_root, d, "*.h")))
    missing = sorted(public - set(os.listdir(installed_dir)))
    if missing:
        fail("public headers not installed (add them to install_headers): %s" % " ".join(missing))


def pkg_config_flags(destdir, pc_dir):
    env = dict(os.environ)
    env["PKG_CONFIG_SYSROOT_DIR"] = destdir
    # Ours first; lmdb and libxxhash (Requires) come from the system's path.
    env["PKG_CONFIG_PATH"] = os.pathsep.join(p for p in (pc_dir, env.get("PKG_CONFIG_PATH"))
                                             if p)
    return run(["pkg-config", "--cflags", "--libs", "dogpile"], env=env).split()


def main(argv):
    if len(argv) < 6:
        fail(__doc__)
    meson, build_dir, source_root, readme, cxx = argv[1], argv[2], argv[3], argv[4], argv[5:]

    with tempfile.TemporaryDirectory(prefix="dogpile-install-") as tmp:
        destdir = os.path.join(tmp, "destdir")
        pc_dir, installed_headers = install(meson, build_dir, destdir)
        check_headers(source_root, installed_headers)
        flags = pkg_config_flags(destdir, pc_dir)
        if "-I" + os.path.dirname(installed_headers) not in flags:
            fail("pkg-config does not point at the installed headers (%s): %s"
                 % (os.path.dirname(installed_headers), " ".join(flags)))

        source = os.path.join(tmp, "readme_example.cc")
        extract_readme_example.main(["extract_readme_example.py", readme, source])
        exe = os.path.join(tmp, "readme_example")
        # The flags after the source, so the static library resolves its symbols.
        args = cxx + CXXFLAGS + [source, "-o", exe] + flags
        r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
        if r.returncode != 0 or r.stderr:
            fail("the README example does not build cleanly against the installed library:\n"
                 "$ %s\n%s%s" % (" ".join(args), r.stdout, r.stderr))
        # It makes and removes its own cache directory.
        out = run([exe])
        if out != "ok\n":
            fail("the README example printed %r, not 'ok'" % out)
    print("install_test: the README example builds against the installed library with %s"
          % " ".join(CXXFLAGS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
