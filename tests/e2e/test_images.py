"""The images tests/cluster/images.sh builds (no registry, no base image: what the node suite
runs) hold what the Dockerfiles put in theirs: the same binaries at the same paths, the same
Debian packages' files, the same user and entrypoint."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import ROOT

IMAGES = ROOT / "tests" / "cluster" / "images.sh"
# What a distroless/cc base brings (glibc, libgcc, CA roots), by Debian package.
DISTROLESS_CC = {"libc6", "libgcc-s1", "ca-certificates"}


def dockerfile(path: str) -> dict:
    """The final stage of a Dockerfile: the files it copies in, its packages, user, entrypoint."""
    text = (ROOT / path).read_text()
    final = text[text.rindex("\nFROM "):]
    base = final.split()[1]
    packages = set()
    for m in re.finditer(r"apt-get install -y --no-install-recommends ([^&\n]+)", final):
        packages |= set(m.group(1).split())
    if base.startswith("gcr.io/distroless/cc"):
        packages |= DISTROLESS_CC
    copies = {m.group(2): m.group(1).rsplit("/", 1)[1] for m in re.finditer(r"COPY --from=build (\S+) (\S+)", final)}
    return {
        "copies": copies,
        "packages": packages,
        "user": re.search(r"^USER (\S+)", final, re.M).group(1),
        "entrypoint": re.search(r'^ENTRYPOINT \["([^"]+)"\]', final, re.M).group(1),
    }


def script(image: str) -> dict:
    """What images.sh says IMAGE holds (its one list), and its config line."""
    lines = subprocess.run([str(IMAGES), "--contents", image], capture_output=True, text=True, check=True).stdout.splitlines()
    *files, config = lines
    name, user, entrypoint = config.split()
    copies = {f.split("=", 1)[1]: f.split("=", 1)[0].rsplit("/", 1)[1] for f in files if "=" in f}
    packages = set()
    for f in files:
        if "=" in f:
            continue
        if f == "/etc/ssl/certs/ca-certificates.crt":  # made by ca-certificates' own script, not listed by dpkg
            packages.add("ca-certificates")
            continue
        owner = subprocess.run(["dpkg", "-S", f], capture_output=True, text=True, check=True).stdout
        packages.add(owner.split(":")[0])
    return {"copies": copies, "packages": packages, "user": user, "entrypoint": entrypoint}


@pytest.mark.parametrize("image,path", [("sidecar", "sidecar/Dockerfile"), ("operator", "operator/Dockerfile")])
def test_images_built_here_hold_what_the_dockerfiles_put_in_theirs(image, path):
    built, docker = script(image), dockerfile(path)
    assert built["copies"] == docker["copies"], "the same binaries at the same paths"
    assert built["user"] == docker["user"] and built["entrypoint"] == docker["entrypoint"]
    # Whatever the script takes from this machine's packages, the Dockerfile installs (or its
    # base brings), and the reverse; the script's shared libraries are what ldd finds.
    assert built["packages"] - {"libc6", "libgcc-s1"} <= docker["packages"], built["packages"]
    assert docker["packages"] - DISTROLESS_CC <= built["packages"], docker["packages"]
