"""Which robots an edge serves: declared, taken over from a dead edge, discovered and not
served by another live edge (stac_sensitivity.fleet_membership)."""

from __future__ import annotations

import pytest

from stac_sensitivity.fleet_membership import FleetMembership, robot_namespace, robot_namespaces


def test_robot_names_are_namespaces():
    assert robot_namespace("r1") == "/r1"
    assert robot_namespace("/fleet/r2/") == "/fleet/r2"
    assert robot_namespace("/") == robot_namespace("") == "/"
    assert robot_namespaces(["r1", "/r1", "r2"]) == ("/r1", "/r2")
    for bad in ("1robot", "r-1", "r 1", "a//b", 7):
        with pytest.raises(ValueError):
            robot_namespace(bad)


def test_declared_robots_are_served_in_order():
    membership = FleetMembership("/edge_a")
    membership.declare(["r2", "r1"])
    assert membership.served(0.0) == ("/r2", "/r1")
    membership.declare(["r1"])  # r2 moved to another edge at run time
    assert membership.served(0.0) == ("/r1",)


def test_a_stand_in_takes_a_dead_edges_robots_until_it_is_back():
    stand_in = FleetMembership("/edge_b", edge_timeout_s=1.0)
    stand_in.declare(["r3"])
    stand_in.stand_in(["/edge_a"])
    assert stand_in.served(0.0) == ("/r3",)  # edge_a never heard: nothing to take over
    stand_in.heard("/edge_a", ["/r1", "/r2"], ["/r1", "/r2"], now_s=10.0)
    assert stand_in.served(10.9) == ("/r3",)
    assert stand_in.served(11.1) == ("/r3",)  # silent once: maybe we were the busy ones
    assert stand_in.served(11.3) == ("/r3", "/r1", "/r2")  # silent twice in a row: dead
    assert stand_in.dead_edges() == ("/edge_a",)
    stand_in.heard("/edge_a", ["/r1", "/r2"], ["/r1", "/r2"], now_s=20.0)  # restarted
    assert stand_in.served(20.0) == ("/r3",)


def test_heartbeats_read_late_after_a_busy_spell_are_no_death():
    """The stand-in was busy for 3 s; its first update comes before the heartbeats that
    waited meanwhile were read, its second after: edge_a was never dead."""
    stand_in = FleetMembership("/edge_b", edge_timeout_s=1.0)
    stand_in.stand_in(["/edge_a"])
    stand_in.heard("/edge_a", ["/r1"], ["/r1"], now_s=10.0)
    assert stand_in.served(13.0) == ()
    stand_in.heard("/edge_a", ["/r1"], ["/r1"], now_s=13.01)  # the queued heartbeats
    assert stand_in.served(13.25) == ()


def test_two_stand_ins_for_one_edge_do_not_both_take_its_robots():
    b = FleetMembership("/edge_b", edge_timeout_s=1.0)
    c = FleetMembership("/edge_c", edge_timeout_s=1.0)
    for stand_in in (b, c):
        stand_in.stand_in(["/edge_a"])
        stand_in.heard("/edge_a", ["/r1"], ["/r1"], now_s=0.0)
        stand_in.served(2.0)
        assert stand_in.served(2.1) == ("/r1",)  # both took it before hearing each other
    b.heard("/edge_c", ["/r1"], [], now_s=2.2)
    c.heard("/edge_b", ["/r1"], [], now_s=2.2)
    assert b.served(2.3, serving=["/r1"]) == ("/r1",)  # the name that sorts first keeps it
    assert c.served(2.3, serving=["/r1"]) == ()


def test_an_edge_not_stood_in_for_is_left_alone():
    membership = FleetMembership("/edge_b")
    membership.heard("/edge_c", ["/r9"], ["/r9"], now_s=0.0)
    assert membership.served(100.0) == ()


def test_discovered_robots_go_to_one_edge():
    a = FleetMembership("/edge_a", robot_timeout_s=2.0, discover=True)
    b = FleetMembership("/edge_b", robot_timeout_s=2.0, discover=True)
    for edge in (a, b):
        edge.found(["/r1", "/r2"], now_s=0.0)
    # both found them before hearing each other: both take them ...
    assert a.served(0.0) == b.served(0.0) == ("/r1", "/r2")
    a.heard("/edge_b", ["/r1", "/r2"], [], now_s=0.1)
    b.heard("/edge_a", ["/r1", "/r2"], [], now_s=0.1)
    # ... then the edge whose name sorts first keeps them
    assert a.served(0.2, serving=["/r1", "/r2"]) == ("/r1", "/r2")
    assert b.served(0.2, serving=["/r1", "/r2"]) == ()
    # a newcomer does not take robots a live edge serves
    c = FleetMembership("/a_newcomer", discover=True)
    c.found(["/r1"], now_s=0.3)
    c.heard("/edge_a", ["/r1", "/r2"], [], now_s=0.3)
    assert c.served(0.3) == ()


def test_a_robot_declared_elsewhere_is_not_discovered_here():
    membership = FleetMembership("/edge_a", discover=True)
    membership.found(["/r1"], now_s=0.0)
    membership.heard("/edge_z", ["/r1"], ["/r1"], now_s=0.0)
    assert membership.served(0.0, serving=["/r1"]) == ()


def test_a_discovered_robot_leaves_when_its_stream_does():
    membership = FleetMembership("/edge_a", robot_timeout_s=2.0, discover=True)
    membership.found(["/r1"], now_s=0.0)
    membership.found(["/r2"], now_s=1.0)  # r1 stopped publishing
    assert membership.served(2.5) == ("/r2",)
    assert membership.served(3.5) == ()


def test_own_heartbeats_are_ignored():
    membership = FleetMembership("/edge_a", discover=True)
    membership.found(["/r1"], now_s=0.0)
    membership.heard("/edge_a", ["/r1"], ["/r1"], now_s=0.0)
    assert membership.served(0.0, serving=["/r1"]) == ("/r1",)
