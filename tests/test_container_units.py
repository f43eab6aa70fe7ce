"""hpktainer's reading of Apptainer's command line, and the exact nested Apptainer commands it runs.

Apptainer is not installable on this machine: the commands it would get are what can be checked here.
"""

from __future__ import annotations

import pytest

from hpk_slurm.container.args import parse
from hpk_slurm.container.ipam import Ipam, SubnetFull
from hpk_slurm.container.publish import parse_publish
from hpk_slurm.errors import HpkError
from hpk_slurm.procs import ProcRef
from hpk_slurm.runtime.apptainer import apptainer_env, nested_command_argv, nested_instance_start_argv


def test_options_pass_through_and_image_is_found_after_valued_ones():
    args = parse("exec", ["--bind", "/data:/data", "-B", "/x", "--cleanenv", "--env=A=1", "-p",
                          "img.sif", "python3", "-c", "print(1)"])
    assert args.apptainer_options == ["--bind", "/data:/data", "-B", "/x", "--cleanenv", "--env=A=1", "-p"]
    assert args.image == "img.sif" and args.command == ["python3", "-c", "print(1)"]
    assert args.option_values("--env", "-e") == ["A=1"]


def test_our_options_are_taken_out():
    args = parse("run", ["--net-mode", "veth", "--publish", "8080:80", "--wait-peers", "--nv", "img.sif", "a"])
    assert (args.net_mode, args.publish, args.wait_peers) == ("veth", ["8080:80"], True)
    assert args.apptainer_options == ["--nv"] and args.command == ["a"]


def test_arguments_after_image_are_the_commands_even_if_they_look_like_options():
    args = parse("exec", ["img", "ls", "--network", "-n"])
    assert args.command == ["ls", "--network", "-n"] and args.apptainer_options == []


@pytest.mark.parametrize("option", ["--net", "-n", "--network=bridge", "--network-args", "--dns"])
def test_network_options_are_refused(option):
    argv = [option] + (["x"] if "=" not in option and option not in ("--net", "-n") else []) + ["img", "true"]
    with pytest.raises(HpkError, match="not available with hpktainer"):
        parse("exec", argv)


@pytest.mark.parametrize("verb, argv, message", [
    ("exec", ["img"], "missing COMMAND"),
    ("run", [], "missing IMAGE"),
    ("instance-start", ["img"], "missing instance NAME"),
    ("exec", ["--bind"], "needs a value"),
    ("exec", ["--net-mode", "tun", "img", "x"], "relay"),
])
def test_bad_command_lines(verb, argv, message):
    with pytest.raises(HpkError, match=message):
        parse(verb, argv)


def test_instance_start_takes_a_name():
    args = parse("instance-start", ["--bind", "/a", "img.sif", "web", "--port", "80"])
    assert args.instance_name == "web" and args.command == ["--port", "80"]


def test_nested_apptainer_commands():
    assert nested_instance_start_argv("apptainer", ["--bind", "/a"], "img.sif", "hpk-1") == [
        "apptainer", "instance", "start", "--net", "--network", "none", "--bind", "/a", "img.sif", "hpk-1"]
    assert nested_command_argv("apptainer", "exec", "hpk-1", ["ls", "-l"]) == [
        "apptainer", "exec", "instance://hpk-1", "ls", "-l"]
    assert apptainer_env({"HPK_IP": "10.244.1.2"}) == {"APPTAINERENV_HPK_IP": "10.244.1.2"}


@pytest.mark.parametrize("text, expected", [("8080:80", ("tcp", 8080, 80)), ("5353:53/udp", ("udp", 5353, 53))])
def test_publish_specs(text, expected):
    pub = parse_publish(text)
    assert (pub.proto, pub.host_port, pub.container_port) == expected


@pytest.mark.parametrize("text", ["80:80", "8080", "8080:80/sctp", "x:y", "8080:0", "70000:80"])
def test_bad_publish_specs(text):
    with pytest.raises(HpkError):
        parse_publish(text)


def test_ipam_hands_out_distinct_addresses_reclaims_dead_owners_and_reports_full(tmp_path):
    import ipaddress
    import os

    ipam = Ipam(tmp_path, ipaddress.IPv4Interface("10.9.0.1/29"))  # .2-.6 usable (.1 is the gateway)
    me = ProcRef.of(os.getpid())
    dead = ProcRef(me.pid, me.started + 1)  # a start time no living process has
    leases = [ipam.allocate(f"c{i}", me) for i in range(4)]
    ghost = ipam.allocate("ghost", dead)
    assert [lease.address for lease in leases + [ghost]] == [f"10.9.0.{i}" for i in range(2, 7)]
    again = ipam.allocate("next", me)  # the dead owner's address comes back
    assert again.address == ghost.address
    with pytest.raises(SubnetFull, match="no free address in 10.9.0.0/29"):
        ipam.allocate("one-too-many", me)
    ipam.release(leases[0])
    assert ipam.allocate("after-release", me).address == "10.9.0.2"
