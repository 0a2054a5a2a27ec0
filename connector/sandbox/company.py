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
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

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
