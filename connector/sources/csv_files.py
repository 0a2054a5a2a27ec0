"""HR CSV drops: a glob of files, one termination per row.

A file with the wrong header is not a termination feed at all and contributes
nothing (a misplaced payroll export must not fire anyone); a bad row is reported
with file and line and the rest of the file still counts. A row the CSV reader
itself cannot frame (a field over its 128 KiB limit) leaves no way to tell where
the next row starts, so the rest of that file is rejected from that line; as with
an unreadable file, the read is then not whole and cancels nobody.
"""
from __future__ import annotations

import csv
import glob
import io

from ..errors import InputRejected, SourceError
from .base import Pull, Source
from .records import REQUIRED, FeedOptions, to_termination

MAX_FILE = 64 << 20     # bytes; a termination feed is a few kilobytes
HEADER = ("employee_id", "email", "first_name", "last_name", "manager_email",
          "termination_date", "termination_time", "kind")


class CsvOptions(FeedOptions):
    path: str          # a glob of CSV files


class CsvSource(Source):
    type = "csv"
    options_model = CsvOptions

    def pull(self, since: str | None = None) -> Pull:
        pull = Pull(complete=True)
        files = sorted(glob.glob(self.options.path))
        for path in files:
            try:
                with open(path, encoding="utf-8-sig", newline="") as fh:
                    text = fh.read(MAX_FILE + 1)
            except (OSError, UnicodeDecodeError) as e:
                pull.rejected.append(InputRejected(f"cannot read: {e}", path))
                pull.complete = False
                continue
            if len(text) > MAX_FILE:
                pull.rejected.append(InputRejected(f"larger than {MAX_FILE >> 20} MiB: not a termination feed", path))
                pull.complete = False
                continue
            self._read(path, text, pull)
        return pull

    def _read(self, path: str, text: str, pull: Pull) -> None:
        fields = self.options.fields
        reader = csv.DictReader(io.StringIO(text))
        try:
            header = reader.fieldnames or []
            needed = [fields.get(f, f) for f in REQUIRED + ("first_name", "last_name", "manager_email")]
            missing = [h for h in needed if h not in header]
            if missing:
                pull.rejected.append(InputRejected(f"not a termination feed: header lacks {', '.join(missing)} "
                                                   f"(expected {','.join(HEADER)})", f"{path}:1"))
                pull.complete = False
                return
            for row in reader:
                self._row(row, f"{path}:{reader.line_num}", fields, pull)
        except csv.Error as e:
            pull.rejected.append(InputRejected(f"{e}: this line and the rest of the file are not read",
                                               f"{path}:{reader.reader.line_num}"))
            pull.complete = False

    def _row(self, row: dict, where: str, fields: dict, pull: Pull) -> None:
        if None in row:
            pull.rejected.append(InputRejected("more fields than the header", where))
            return
        try:
            pull.terminations.append(to_termination(row, tenant=self.tenant.id, source=self.name,
                                                    where=where, fields=fields))
        except InputRejected as e:
            pull.rejected.append(e)

    def check_online(self) -> None:
        if not glob.glob(self.options.path):
            raise SourceError(f"no file matches {self.options.path}", self.where)
