"""The generated company: deterministic, well-formed at every size, and the same people in every system."""
from __future__ import annotations

import datetime as dt

import pytest

from connector.sandbox import company, world

TODAY = dt.date(2026, 11, 23)


def test_the_same_size_day_and_seed_make_the_same_company():
    assert company.generate(300, TODAY) == company.generate(300, TODAY)
    assert company.generate(300, TODAY, seed=1) != company.generate(300, TODAY)


@pytest.mark.parametrize("size", [10, 57, 2000])
def test_a_company_is_well_formed_at_every_size(size):
    people = company.generate(size, TODAY).people
    assert len(people) == size
    assert len({p.number for p in people}) == len({p.email.lower() for p in people}) == size
    seen = set()
    for p in people:                                  # everyone but the top has a manager who came first
        assert (p.manager in seen) if p is not people[0] else not p.manager
        seen.add(p.email)
    assert {p.leaver for p in people if p.leaver} == set(company.LEAVER_STATES)


def test_the_first_people_are_example_ltds_staff_as_ad_has_them():
    people = company.generate(20, TODAY).people
    for person, known in zip(people, company.ORDINARY):
        assert (person.email, person.given, person.surname, person.synced) == (known.mail, known.given, known.surname, True)
    dan = next(p for p in people if p.email == company.DAN.mail)
    assert dan.manager == company.CAROL.mail and dan.number == company.DAN.employee_id


def test_each_leaver_state_is_what_hr_shows():
    leavers = {p.leaver: p for p in company.generate(10, TODAY).leavers()}
    assert leavers["due"].leaves_on < TODAY and leavers["future"].leaves_on > TODAY
    assert leavers["today"].leaves_on == leavers["immediate"].leaves_on == TODAY
    assert leavers["moved"].history[0][1] != leavers["moved"].leaves_on
    assert leavers["withdrawn"].leaves_on is None and leavers["rehired"].leaves_on is None
    assert leavers["long_gone"].leaves_on < TODAY - dt.timedelta(days=365)


@pytest.mark.parametrize("size", [9, 100_001])
def test_a_size_outside_the_range_is_refused(size):
    with pytest.raises(ValueError, match="10 to 100,000"):
        company.generate(size, TODAY)


def test_every_system_holds_the_same_people():
    built = world.build(60, TODAY)
    people = built.company.people
    cloud = {u["employeeId"]: u for u in built.cloud.users.values()}
    hr = {e.number: e for e in built.bamboohr.employees.values()}
    assert set(cloud) == set(hr) == {p.number for p in people}
    for p in people:
        assert cloud[p.number]["userPrincipalName"] == hr[p.number].email == p.email
        manager = cloud[p.number]["manager"]
        assert (built.cloud.users[manager]["mail"] if manager else "") == p.manager == hr[p.number].supervisor_email
    phones = {e.email: e for e in built.ringcentral.extensions.values()}
    assert set(phones) == {p.email for p in people}
    for p in people:
        ext = phones[p.email]
        assert len(built.ringcentral.numbers_of(ext.id)) == 1 and bool(ext.voicemail) == bool(p.leaver)
    report = {e["Employee_ID"]: e for e in built.workday.entries()}
    assert set(report) == {p.number for p in people if p.leaves_on}
    shown = {e.number: e.values(built.bamboohr.today, only_current=False) for e in hr.values()}
    for p in people:
        terminated = shown[p.number]["employmentHistoryStatus"] == "Terminated"
        assert terminated == bool(p.leaves_on), p.leaver
        if p.leaves_on:
            assert shown[p.number]["terminationDate"] == p.leaves_on.isoformat()
            assert report[p.number]["Termination_Date"].startswith(p.leaves_on.isoformat())
