"""No identifier in an HTTP error body: the errors of send and status are provoked with identifiers in the
request and their bodies read.

The rest of the PHI scan (every function log, the captured output of every reliability test, every HTTP
body the suite saw, every batch's reasons and errors as the status API shows them) runs once, at the end
of the session, whatever the order of the tests: ``support.phi.scan``, called by the ``stack`` fixture.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from support import phi
from support.reliability import Rel, http

from sendit.local import corpus

pytestmark = [pytest.mark.stack]


def test_http_errors_of_send_and_status_name_nothing(rel: Rel) -> None:
    send, status = rel.stack.function_url("send"), rel.stack.function_url("status")
    folder = f"{corpus.PLANTED['accession']}-{corpus.PLANTED['patient_name']}"
    provoked = [
        http("POST", send, raw=b"{not json " + corpus.PLANTED["patient_id"].encode()),
        http("POST", send, {"batches": [folder, corpus.PLANTED["patient_id"]]}),
        http("POST", send, {"batches": "ACC99817263"}),
        http("GET", send),
        http("GET", f"{status}/batches/{folder}"),
        http("GET", f"{status}/batches/{corpus.PLANTED['accession']}?page_token=%ZZ"),
        http("DELETE", f"{status}/batches"),
        http("GET", f"{status}/{corpus.PLANTED['patient_id']}/../../etc/passwd"),
        http("GET", f"{status}/batches?folder={quote(folder, safe='')}"),  # an unknown folder
    ]
    assert [code for code, _ in provoked] == [400, 400, 400, 405, 404, 400, 405, 404, 404]
    for code, body in provoked:
        assert not phi.leaks(body, corpus.planted_needles()), (code, "an error body echoes the request")
