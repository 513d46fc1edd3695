"""An independent EWS client against the test server: DavMail (CalDAV/CardDAV gateway, Java).

Skipped unless DavMail (Debian package ``davmail``) and Java are installed. It creates, lists, reads
and deletes an event, a contact and a task through DavMail, and checks that exchangelib sees the
same in the mailbox (issue #18, "How it is checked").
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from exchangelib import DELEGATE, NTLM, Account, Configuration, Credentials

from exchanged.testing.ews.fixtures import running_server
from exchanged.testing.ews.server import DEFAULT_PASSWORD

DAVMAIL_JAR = Path("/usr/share/davmail/davmail.jar")
MAILBOX = "alice@example.test"

pytestmark = pytest.mark.skipif(
    not DAVMAIL_JAR.exists() or not shutil.which("java") or not shutil.which("keytool"),
    reason="needs DavMail (Debian package davmail) and Java",
)

EVENT = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//exchanged tests//EN
BEGIN:VEVENT
UID:davmail-event-1
SUMMARY:Weekly via DavMail
LOCATION:Room 7
DTSTART;TZID=Europe/Berlin:20261211T100000
DTEND;TZID=Europe/Berlin:20261211T110000
RRULE:FREQ=WEEKLY;COUNT=3
END:VEVENT
END:VCALENDAR
"""
CARD = """BEGIN:VCARD
VERSION:3.0
UID:davmail-contact-1
FN:Grace Hopper
N:Hopper;Grace;;;
ORG:Navy
EMAIL;TYPE=INTERNET,WORK:grace@example.test
TEL;TYPE=CELL:+1 555
END:VCARD
"""
TODO = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//exchanged tests//EN
BEGIN:VTODO
UID:davmail-task-1
SUMMARY:Task via DavMail
STATUS:IN-PROCESS
PERCENT-COMPLETE:40
DUE;VALUE=DATE:20261220
END:VTODO
END:VCALENDAR
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"DavMail exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    pytest.fail(f"DavMail did not listen on {port}: {log.read_text()[-2000:]}")


@pytest.fixture
def davmail(tmp_path: Path, restore_adapter: None) -> Iterator[tuple[str, Account]]:
    from exchanged.testing.ews.fixtures import trust_ca

    with running_server(tmp_path / "ews", mailboxes=[MAILBOX]) as server:
        server.set_mailbox_timezone(MAILBOX, "W. Europe Standard Time")
        trust_ca(server.ca_file)
        store = tmp_path / "trust.jks"
        subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "ews", "-file", server.ca_file,
                        "-keystore", str(store), "-storepass", "changeit"], check=True, capture_output=True)
        port = _free_port()
        props = tmp_path / "davmail.properties"
        props.write_text("\n".join([
            "davmail.server=true", "davmail.mode=EWS", f"davmail.url={server.url}",
            f"davmail.caldavPort={port}", "davmail.imapPort=", "davmail.smtpPort=", "davmail.ldapPort=",
            "davmail.popPort=", "davmail.allowRemote=false", "davmail.bindAddress=127.0.0.1",
            "davmail.disableUpdateCheck=true", "davmail.enableKerberos=false",
            f"davmail.logFilePath={tmp_path / 'davmail.log'}", "log4j.rootLogger=WARN", "",
        ]))
        log = tmp_path / "davmail.out"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["java", f"-Djavax.net.ssl.trustStore={store}", "-Djavax.net.ssl.trustStorePassword=changeit",
                 "-jar", str(DAVMAIL_JAR), str(props)],
                stdout=out, stderr=subprocess.STDOUT,
            )
            try:
                _wait_for_port(port, proc, log)
                account = Account(MAILBOX, config=Configuration(
                    service_endpoint=server.url, credentials=Credentials(MAILBOX, DEFAULT_PASSWORD),
                    auth_type=NTLM), autodiscover=False, access_type=DELEGATE)
                yield f"http://127.0.0.1:{port}/users/{MAILBOX}", account
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _hrefs(base: str, folder: str) -> list[str]:
    body = ('<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>')
    r = requests.request("PROPFIND", f"{base}/{folder}/", data=body, auth=(MAILBOX, DEFAULT_PASSWORD),
                         headers={"Depth": "1", "Content-Type": "text/xml"}, timeout=60)
    assert r.status_code == 207, r.text
    import re

    return [h for h in re.findall(r"<D:href>([^<]*)</D:href>", r.text) if not h.endswith("/")]


def test_davmail_creates_lists_reads_and_deletes_what_exchangelib_sees(davmail) -> None:
    import datetime as dt

    base, account = davmail
    auth = (MAILBOX, DEFAULT_PASSWORD)
    for folder, name, text, ctype in (("calendar", "e1.ics", EVENT, "text/calendar"),
                                      ("contacts", "c1.vcf", CARD, "text/vcard"),
                                      ("tasks", "t1.ics", TODO, "text/calendar")):
        r = requests.put(f"{base}/{folder}/{name}", data=text.replace("\n", "\r\n").encode(), auth=auth,
                         headers={"Content-Type": ctype}, timeout=60)
        assert r.status_code == 201, (folder, r.status_code, r.text)

    (event,) = account.calendar.all()
    assert event.subject == "Weekly via DavMail" and event.location == "Room 7"
    assert event.start == dt.datetime(2026, 12, 11, 9, 0, tzinfo=dt.UTC)
    assert event.recurrence is not None and event.recurrence.boundary.number == 3
    (contact,) = account.contacts.all()
    assert (contact.display_name, contact.given_name, contact.surname) == ("Grace Hopper", "Grace", "Hopper")
    assert [e.email for e in contact.email_addresses] == ["grace@example.test"]
    (task,) = account.tasks.all()
    assert (task.subject, task.status, int(task.percent_complete)) == ("Task via DavMail", "InProgress", 40)

    root = base.split("/users/")[0]
    # DavMail shows the tasks in the calendar collection too (CalDAV clients expect VTODOs there)
    bodies = {h: requests.get(f"{root}{h}", auth=auth, timeout=60).text for h in _hrefs(base, "calendar")}
    (event_href,) = [h for h, text in bodies.items() if "SUMMARY:Weekly via DavMail" in text]
    assert "RRULE:FREQ=WEEKLY;COUNT=3" in bodies[event_href]
    assert any("SUMMARY:Task via DavMail" in text for text in bodies.values())
    assert len(_hrefs(base, "contacts")) == 1
    query = ('<?xml version="1.0"?><C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
             "<D:prop><C:calendar-data/></D:prop><C:filter><C:comp-filter name=\"VCALENDAR\">"
             '<C:comp-filter name="VTODO"/></C:comp-filter></C:filter></C:calendar-query>')
    r = requests.request("REPORT", f"{base}/tasks/", data=query, auth=auth, timeout=60,
                         headers={"Depth": "1", "Content-Type": "text/xml"})
    assert r.status_code == 207 and "SUMMARY:Task via DavMail" in r.text and "PERCENT-COMPLETE:40" in r.text

    r = requests.delete(f"{root}{event_href}", auth=auth, timeout=60)
    assert r.status_code == 200
    assert list(account.calendar.all()) == []
