"""Example Ltd, a small fictional client: the people the sandbox DC holds.

It carries every case the AD provider must get right: ordinary staff with
managers, aliases and nested groups; someone matched only by address (no employeeID);
an admin whose rights come through a nested group (Samba never sets adminCount), and
one whose only admin group is its primary group (memberOf never shows that);
a protected service account; and two accounts sharing one email. The end-to-end
tests and the demo's HR CSV name people through the constants below.

Samba 4.17 lacks groups a Windows DC has: Key Admins and Enterprise Key Admins (2016
and later; their RIDs are fixed, and an LDAP add may not choose a SID, so they are
written into the DC's database directly) and DnsAdmins (made with the DNS role).

The sandbox binds as the domain Administrator (`SambaDC.admin_user`): delegating
just the rights the connector needs is a task for a real client's DC, not a demo.

`generate(size)` grows Example Ltd into a company of 10 to 100,000 people for the cloud
and HR systems (and the benchmarks): the same people, the same seed, the same company
every time. Its first people are the ordinary staff above, so AD, Microsoft 365 and the HR
feeds name one set of people; the rest are made up from fixed name lists, managed seven to
a manager, in departments, with groups, licences and mailboxes, and an HR history that
puts leavers in every state the engine must handle (`LEAVER_STATES`).
"""
from __future__ import annotations

import datetime as dt
import random
import shutil
import subprocess
from dataclasses import dataclass, field

import ldap3
from ldap3.protocol.formatters.formatters import format_sid

from ..providers.active_directory import unicode_pwd
from .samba import REALM, SambaDC

BASE_DN = SambaDC.base_dn
MAIL_DOMAIN = REALM.lower()
PASSWORD = "Welcome-2-Example"        # every seeded account's password (complexity: 3 of 4 classes)

STAFF_OU = f"OU=Staff,{BASE_DN}"
LEAVERS_OU = f"OU=Leavers,{BASE_DN}"  # the provider's disabled_ou
SERVICE_OU = f"OU=Service,{BASE_DN}"
GROUPS_OU = f"OU=Groups,{BASE_DN}"
DOMAIN_ADMINS = f"CN=Domain Admins,CN=Users,{BASE_DN}"
USERS_CONTAINER = f"CN=Users,{BASE_DN}"
GROUP_GLOBAL, GROUP_DOMAIN_LOCAL, GROUP_UNIVERSAL = -2147483646, -2147483644, -2147483640   # security groups
# what a Windows DC with the DNS role has and Samba's provisioning leaves out: name -> (RID or None, groupType)
NEWER_DC_GROUPS = {"Key Admins": (526, GROUP_GLOBAL), "Enterprise Key Admins": (527, GROUP_UNIVERSAL),
                   "DnsAdmins": (None, GROUP_DOMAIN_LOCAL)}


def group_dn(name: str) -> str:
    return f"CN={name},{GROUPS_OU}"


# group -> the groups it is a member of (All-Staff holds Engineering: the nested one)
GROUPS = {
    "All-Staff": (),
    "Engineering": ("All-Staff",),
    "Sales": (),
    "Finance": (),
    "VPN-Users": (),
    "File-Share-RW": (),
    "IT-Admins": (),                  # nested into Domain Admins, see `seed`
}


@dataclass(frozen=True)
class Person:
    sam: str
    given: str
    surname: str
    employee_id: str = ""
    mail: str = ""
    aliases: tuple[str, ...] = ()     # extra smtp: proxy addresses
    manager: str = ""                 # sAMAccountName
    groups: tuple[str, ...] = ()
    ou: str = STAFF_OU
    description: str = ""
    primary_group: str = ""           # one of `groups`, made the primaryGroupID (default: Domain Users)

    @property
    def cn(self) -> str:
        return f"{self.given} {self.surname}".strip()

    @property
    def dn(self) -> str:
        return f"CN={self.cn},{self.ou}"

    @property
    def upn(self) -> str:
        return f"{self.sam}@{MAIL_DOMAIN}"

    @property
    def proxy_addresses(self) -> list[str]:
        primary = [f"SMTP:{self.mail}"] if self.mail else []
        return primary + [f"smtp:{alias}" for alias in self.aliases]


def _mail(local: str) -> str:
    return f"{local}@{MAIL_DOMAIN}"


ALICE = Person("aarcher", "Alice", "Archer", "E1001", _mail("alice.archer"), groups=("All-Staff", "VPN-Users"),
               description="Managing Director")
BOB = Person("bbaker", "Bob", "Baker", "E1002", _mail("bob.baker"), aliases=(_mail("bob"), _mail("sales-emea")),
             manager="aarcher", groups=("Sales", "VPN-Users", "All-Staff"), description="Sales Manager")
CAROL = Person("cchen", "Carol", "Chen", "E1003", _mail("carol.chen"), manager="aarcher",
               groups=("Engineering", "VPN-Users"), description="Head of Engineering")
DAN = Person("ddawson", "Dan", "Dawson", "E1004", _mail("dan.dawson"), manager="cchen",
             groups=("Engineering", "File-Share-RW"))
ERIN = Person("eevans", "Erin", "Evans", "E1005", _mail("erin.evans"), aliases=(_mail("erin"),), manager="bbaker",
              groups=("Sales", "All-Staff"))
FRANK = Person("ffischer", "Frank", "Fischer", "E1006", _mail("frank.fischer"), manager="cchen",
               groups=("Engineering", "File-Share-RW", "VPN-Users"))
GRACE = Person("ggreen", "Grace", "Green", "E1007", _mail("grace.green"), manager="aarcher",
               groups=("Finance", "File-Share-RW", "All-Staff"))
# HR knows Henry as E1008, but nobody ever typed it into AD: matched by address only
HENRY = Person("hhill", "Henry", "Hill", "", _mail("henry.hill"), aliases=(_mail("h.hill"),), manager="ggreen",
               groups=("Finance", "All-Staff"))
HENRY_EMPLOYEE_ID = "E1008"
ORDINARY = (ALICE, BOB, CAROL, DAN, ERIN, FRANK, GRACE, HENRY)

# an admin: Domain Admins through IT-Admins, so only a nested (in-chain) lookup sees it
ADMIN = Person("iito", "Ivan", "Ito", "E1009", _mail("ivan.ito"), manager="aarcher", groups=("IT-Admins", "All-Staff"))
# an admin only through its primary group (IT-Admins): AD lists no primary group in member or memberOf
PRIMARY_GROUP_ADMIN = Person("kkhan", "Kim", "Khan", "E1011", _mail("kim.khan"), manager="aarcher",
                             groups=("IT-Admins",), primary_group="IT-Admins")
# a service account every tenant lists in `protected` (e.g. "svc-*")
PROTECTED = Person("svc-backup", "svc-backup", "", "", _mail("svc-backup"), ou=SERVICE_OU,
                   description="Nightly backup job")
# two accounts claim one email: a leaver with that address needs a human
AMBIGUOUS_EMAIL = _mail("jo.smith")
AMBIGUOUS_EMPLOYEE_ID = "E1010"      # carried by neither account
AMBIGUOUS = (
    Person("jsmith", "Jo", "Smith", "", AMBIGUOUS_EMAIL, groups=("Sales",)),
    Person("jsmith-ext", "Joanna", "Smith", "", "", aliases=(AMBIGUOUS_EMAIL,), groups=("Sales",),
           description="Contractor account"),
)
PEOPLE = ORDINARY + (ADMIN, PRIMARY_GROUP_ADMIN, PROTECTED) + AMBIGUOUS


def add_person(conn: ldap3.Connection, person: Person, password: str = PASSWORD) -> None:
    """Create an enabled account (password and userAccountControl=512 in the same add)."""
    attrs = {
        "sAMAccountName": person.sam,
        "userPrincipalName": person.upn,
        "givenName": person.given or None,
        "sn": person.surname or None,
        "displayName": person.cn,
        "employeeID": person.employee_id or None,
        "mail": person.mail or None,
        "proxyAddresses": person.proxy_addresses or None,
        "description": person.description or None,
        "manager": next((p.dn for p in PEOPLE if p.sam == person.manager), None) if person.manager else None,
        "unicodePwd": unicode_pwd(password),
        "userAccountControl": 512,
    }
    conn.add(person.dn, ["top", "person", "organizationalPerson", "user"],
             {k: v for k, v in attrs.items() if v is not None})
    for name in person.groups:
        add_member(conn, group_dn(name), person.dn)
    if person.primary_group:                  # the account must be a member first
        conn.search(group_dn(person.primary_group), "(objectClass=group)", ldap3.BASE, attributes=["objectSid"])
        rid = format_sid(conn.response[0]["raw_attributes"]["objectSid"][0]).rsplit("-", 1)[1]
        conn.modify(person.dn, {"primaryGroupID": [(ldap3.MODIFY_REPLACE, [rid])]})


def add_member(conn: ldap3.Connection, group: str, member: str) -> None:
    conn.modify(group, {"member": [(ldap3.MODIFY_ADD, [member])]})


def provider_block(dc: SambaDC, bind_password: str) -> dict:
    """The `[[tenant.provider]]` block for the sandbox; `bind_password` is a secret reference (`file:...`)."""
    return {"type": "active_directory", "url": dc.url, "bind_user": dc.admin_user, "bind_password": bind_password,
            "disabled_ou": LEAVERS_OU, "ca_file": dc.ca_file}


# Run by Samba's own Python (samba-tool's interpreter) on the DC's database: only a local, system
# write may set objectSid. argv: smb.conf, sam.ldb, then name, RID, groupType for each group.
_ADD_WITH_SID = """
import sys
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_pack
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=sys.argv[2], lp=lp, session_info=system_session())
users = "CN=Users," + str(db.get_default_basedn())
for name, rid, kind in zip(*[iter(sys.argv[3:])] * 3):
    db.add({"dn": "CN=%s,%s" % (name, users), "objectClass": "group", "sAMAccountName": name, "groupType": kind,
            "objectSid": ndr_pack(security.dom_sid("%s-%s" % (db.get_domain_sid(), rid)))})
"""


def add_newer_dc_groups(dc: SambaDC, conn: ldap3.Connection) -> None:
    """Give the sandbox DC the privileged groups of a current Windows DC (see NEWER_DC_GROUPS)."""
    conn.search(USERS_CONTAINER, "(objectClass=group)", ldap3.LEVEL, attributes=["sAMAccountName"])
    present = {e["raw_attributes"]["sAMAccountName"][0].decode() for e in conn.response if e["type"] == "searchResEntry"}
    missing = {name: spec for name, spec in NEWER_DC_GROUPS.items() if name not in present}
    with_sid = [str(v) for name, (rid, kind) in missing.items() if rid for v in (name, rid, kind)]
    if with_sid:
        with open(shutil.which("samba-tool")) as tool:
            python = tool.readline()[2:].split()    # "#! /usr/bin/python3"
        subprocess.run([*python, "-c", _ADD_WITH_SID, str(dc.conf), str(dc.dir / "private" / "sam.ldb"), *with_sid],
                       check=True, capture_output=True, timeout=60)
    for name, (rid, kind) in missing.items():
        if rid is None:
            conn.add(f"CN={name},{USERS_CONTAINER}", "group", {"sAMAccountName": name, "groupType": kind})


def seed(target: ldap3.Connection | SambaDC) -> None:
    """Create Example Ltd in an empty sandbox domain (a bound admin connection, or the DC itself, which
    also gets the groups of a newer DC)."""
    conn = target.connect() if isinstance(target, SambaDC) else target
    if isinstance(target, SambaDC):
        add_newer_dc_groups(target, conn)
    for ou in (STAFF_OU, LEAVERS_OU, SERVICE_OU, GROUPS_OU):
        conn.add(ou, "organizationalUnit")
    for name in GROUPS:
        conn.add(group_dn(name), "group", {"sAMAccountName": name})
    for name, parents in GROUPS.items():
        for parent in parents:
            add_member(conn, group_dn(parent), group_dn(name))
    add_member(conn, DOMAIN_ADMINS, group_dn("IT-Admins"))
    for person in PEOPLE:                      # managers come before their reports
        add_person(conn, person)
    if conn is not target:
        conn.unbind()


# -- the generated company ---------------------------------------------------------------------
FIRST_NAMES = ("Aisha Amir Anna Ben Bianca Carlos Chloe Daniel Dmitri Elena Emeka Fatima Felix Gabriel Hana "
               "Hugo Ines Isaac Jade Jonas Julia Kai Keiko Lars Leila Liam Lucia Malik Maria Mateo Maya Mina "
               "Nadia Nils Noah Olga Omar Paula Pedro Priya Quinn Rafael Rosa Ruth Sami Sara Sofia Tariq Tess "
               "Tomas Uma Victor Wen Yara Yusuf Zoe").split()
SURNAMES = ("Abbott Adeyemi Alvarez Andersen Baptiste Bauer Bell Brennan Castillo Chowdhury Costa Dahl Dimitrov "
            "Duarte Eriksen Farouk Fischer Fontaine Garcia Gupta Haddad Hansen Herrera Hughes Ivanova Jensen "
            "Kaur Keller Kowalski Larsen Lopez Mahmoud Marino Meyer Moreau Murphy Nakamura Nguyen Novak Okafor "
            "Olsen Ortiz Park Patel Petrov Quinn Ramos Reyes Rossi Sato Schmidt Silva Singh Sousa Tanaka "
            "Torres Varga Vogel Walsh Weber Yilmaz Young Zhang").split()
DEPARTMENTS = ("Sales", "Engineering", "Finance", "Operations", "Marketing", "Support", "People")
REPORTS_PER_MANAGER = 7
#: what HR says about each leaver, and so what the engine must do with them
LEAVER_STATES = (
    "due",          # left a few days ago: offboard now
    "today",        # leaves today at the tenant's revoke_at
    "immediate",    # walked out today: no waiting for revoke_at
    "future",       # leaves in a few weeks: scheduled
    "moved",        # the date was changed after it was entered: rescheduled
    "withdrawn",    # entered, then cancelled before the day: cancelled
    "rehired",      # left, then hired again: a human decides what to restore
    "long_gone",    # left long before the connector's lookback: not acted on
)
LEAVER_SHARE = 0.1
SKUS = {"SPE_E3": 0.7, "O365_BUSINESS_PREMIUM": 0.3}       # the licence each person has, by share
E3_GROUP = "E3 Licence"                                     # half of the E3 seats come through this group


@dataclass
class Employee:
    """One person of the generated company, as every system of the sandbox knows them."""

    number: str                 # the HR employee id (AD employeeID, Entra employeeId, BambooHR employeeNumber)
    given: str
    surname: str
    email: str
    manager: str = ""           # the manager's email
    department: str = ""
    title: str = ""
    groups: tuple[str, ...] = ()
    licence: str = "SPE_E3"
    licence_by_group: bool = False
    mailbox_gb: float = 2.0
    litigation_hold: bool = False
    synced: bool = False        # the account comes from on-premises AD (Example Ltd's own staff)
    leaver: str = ""            # one of LEAVER_STATES, or "" for someone staying
    history: list[tuple[str, dt.date]] = field(default_factory=list)   # HR events in order: (what, effective)

    @property
    def leaves_on(self) -> dt.date | None:
        """The termination date HR shows now (None: nobody is leaving)."""
        last = None
        for what, day in self.history:
            last = day if what in ("terminate", "move") else None if what in ("withdraw", "rehire") else last
        return last


@dataclass
class Company:
    domain: str
    today: dt.date
    people: list[Employee]

    def leavers(self, state: str | None = None) -> list[Employee]:
        return [p for p in self.people if p.leaver and (state is None or p.leaver == state)]

    def groups(self) -> list[str]:
        return sorted({g for p in self.people for g in p.groups})

    def hr_rows(self) -> list[str]:
        """The company's leavers as rows of the connector's CSV format (`employee_id,email,...,kind`)."""
        rows = []
        for p in self.people:
            if p.leaves_on:
                kind = "immediate" if p.leaver == "immediate" else "voluntary"
                rows.append(f"{p.number},{p.email},{p.given},{p.surname},{p.manager},{p.leaves_on},,{kind}")
        return rows


def _history(state: str, today: dt.date, rng: random.Random) -> list[tuple[str, dt.date]]:
    days = lambda n: today + dt.timedelta(days=n)      # noqa: E731
    return {
        "due": [("terminate", days(-rng.randint(1, 10)))],
        "today": [("terminate", today)],
        "immediate": [("terminate", today)],
        "future": [("terminate", days(rng.randint(3, 30)))],
        "moved": [("terminate", days(10)), ("move", days(rng.randint(11, 40)))],
        "withdrawn": [("terminate", days(rng.randint(5, 20))), ("withdraw", today)],
        "rehired": [("terminate", days(-60)), ("rehire", days(-5))],
        "long_gone": [("terminate", days(-400))],
    }[state]


def generate(size: int, today: dt.date | None = None, seed: int = 2026) -> Company:
    """A company of `size` people (10 to 100,000), the same for the same size, day and seed."""
    if not 10 <= size <= 100_000:
        raise ValueError(f"a sandbox company has 10 to 100,000 people, not {size}")
    today = today or dt.date(2026, 11, 23)
    rng = random.Random(seed)
    people: list[Employee] = []
    for i in range(size):
        if i < len(ORDINARY):                      # Example Ltd's own staff, as AD has them
            known = ORDINARY[i]
            given, surname, email = known.given, known.surname, known.mail
            number = known.employee_id or HENRY_EMPLOYEE_ID
            manager = next((p for p, o in zip(people, ORDINARY) if o.sam == known.manager), None)
            department = next((g for g in known.groups if g in DEPARTMENTS), "Management")
        else:
            given, surname = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
            number = f"E{10000 + i}"
            email = f"{given.lower()}.{surname.lower()}{i}@{MAIL_DOMAIN}"
            manager = people[(i - 1) // REPORTS_PER_MANAGER]
            department = DEPARTMENTS[(i - 1) % len(DEPARTMENTS)] if manager is people[0] else manager.department
        licence = "SPE_E3" if rng.random() < SKUS["SPE_E3"] else "O365_BUSINESS_PREMIUM"
        by_group = licence == "SPE_E3" and rng.random() < 0.5
        groups = ("All Staff", department) + (("VPN Users",) if rng.random() < 0.6 else ()) \
            + ((E3_GROUP,) if by_group else ())
        size_gb = round(min(99.0, rng.lognormvariate(1.0, 1.0)), 1)
        people.append(Employee(number, given, surname, email, manager.email if manager else "", department,
                               "Managing Director" if not i else "", groups, licence, by_group, size_gb,
                               rng.random() < 0.02, synced=i < len(ORDINARY)))
    candidates = list(range(1, size))
    rng.shuffle(candidates)
    count = max(len(LEAVER_STATES), int(size * LEAVER_SHARE))
    for n, i in enumerate(sorted(candidates[:count])):
        person = people[i]
        person.leaver = LEAVER_STATES[n % len(LEAVER_STATES)]
        person.history = _history(person.leaver, today, rng)
    return Company(MAIL_DOMAIN, today, people)
