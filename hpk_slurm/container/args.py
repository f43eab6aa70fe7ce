"""Apptainer's command line, as hpktainer reads it: options pass through, network options are ours.

We only need to know where the options end and IMAGE begins, so the one
thing kept here is which Apptainer options take a value (from `apptainer
run --help` of Apptainer 1.3; an unknown option is taken as a flag).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpk_slurm.errors import HpkError

#: Options of `apptainer run|exec|shell|instance start` that take a value.
VALUE_OPTIONS = {
    "--add-caps", "--app", "--apply-cgroups", "--bind", "-B", "--blkio-weight", "--blkio-weight-device",
    "--cpu-shares", "--cpus", "--cpuset-cpus", "--cpuset-mems", "--device", "--docker-host", "--docker-login",
    "--drop-caps", "--env", "--env-file", "--fusemount", "--home", "-H", "--hostname", "--memory",
    "--memory-reservation", "--memory-swap", "--mount", "--nv-ccli", "--oom-kill-disable", "--overlay", "-o",
    "--pem-path", "--pids-limit", "--pwd", "--scratch", "-S", "--security", "--workdir", "-W", "--authfile",
    "--sif-fuse", "--passphrase", "--pid-file",
}
#: Network options: hpktainer gives the container its network, so these would fight it.
NETWORK_OPTIONS = {"--net", "-n", "--network", "--network-args", "--dns"}
#: hpktainer's own options (before IMAGE, mixed with Apptainer's).
OWN_VALUE_OPTIONS = {"--net-mode", "--publish"}  # (-p is Apptainer's --pid)
OWN_FLAGS = {"--wait-peers"}


@dataclass
class ContainerArgs:
    verb: str  # run | exec | shell | instance-start
    image: str
    command: list[str]  # for exec: the program and its arguments; for run: the arguments
    apptainer_options: list[str] = field(default_factory=list)
    net_mode: str = "relay"
    publish: list[str] = field(default_factory=list)
    instance_name: str | None = None
    wait_peers: bool = False

    def option_values(self, *names: str) -> list[str]:
        """Values of an Apptainer option given as `--opt v` or `--opt=v` (e.g. every --env)."""
        values, opts = [], self.apptainer_options
        for i, opt in enumerate(opts):
            for name in names:
                if opt == name and i + 1 < len(opts):
                    values.append(opts[i + 1])
                elif opt.startswith(name + "="):
                    values.append(opt.split("=", 1)[1])
        return values


def parse(verb: str, argv: list[str]) -> ContainerArgs:
    """Split `[options] IMAGE [ARGS...]` (instance start: `[options] IMAGE NAME [ARGS...]`)."""
    options: list[str] = []
    net_mode, publish, wait_peers = "relay", [], False
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        opt = argv[i]
        name, has_inline = (opt.split("=", 1)[0], True) if "=" in opt else (opt, False)
        if name == "--":
            i += 1
            break
        if name in NETWORK_OPTIONS:
            raise HpkError(f"{name} is not available with hpktainer: the container's network is the job's overlay",
                           "drop the option; use --publish HOSTPORT:PORT to expose a port")
        takes_value = name in VALUE_OPTIONS or name in OWN_VALUE_OPTIONS
        if takes_value and not has_inline:
            if i + 1 >= len(argv):
                raise HpkError(f"option {name} needs a value")
            value = argv[i + 1]
            i += 2
        else:
            value = opt.split("=", 1)[1] if has_inline else None
            i += 1
        if name == "--wait-peers":
            wait_peers = True
        elif name == "--net-mode":
            if value not in ("relay", "veth"):
                raise HpkError(f"--net-mode {value!r}: use relay (TAP + hpk-net-daemon) or veth (kernel)")
            net_mode = value
        elif name == "--publish":
            publish.append(value)
        else:
            options.append(opt)
            if takes_value and not has_inline:
                options.append(value)
    rest = argv[i:]
    if not rest:
        raise HpkError(f"hpktainer {verb.replace('-', ' ')}: missing IMAGE")
    image, rest = rest[0], rest[1:]
    instance_name = None
    if verb == "instance-start":
        if not rest:
            raise HpkError("hpktainer instance start: missing instance NAME after IMAGE")
        instance_name, rest = rest[0], rest[1:]
    if verb == "exec" and not rest:
        raise HpkError("hpktainer exec: missing COMMAND after IMAGE")
    return ContainerArgs(verb, image, rest, options, net_mode, publish, instance_name, wait_peers)
