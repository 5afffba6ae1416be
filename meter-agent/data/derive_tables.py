#!/usr/bin/env python3
"""Derives the simulator's compact tables from the demandlib 0.2.2 data files.

Run once from the repository root:

    python3 meter-agent/data/derive_tables.py /work/shared/data meter-agent/data

Outputs (committed, loaded with include_str!):

* weather_essen_utc.csv: 8760 lines, line k (0-based, after the header) is the
  hour [k, k+1) UTC from 1 January 00:00 of a non-leap year:
  `ghi_w_m2,temp_dc` = global horizontal irradiance (direct + diffuse, rounded
  integer W/m2) and air temperature in tenths of a degree C (integer).
  The source is in CET with `hour_cet_ending` 1..24, so the source hour
  ending h CET covers [h-2, h-1) UTC; the table is rotated by one hour (the
  first UTC hour of the year comes from the last CET hour of 31 December,
  which is the closest available value in a typical year).
* h0_profile.csv: `period,daytype,quarter,mw` with period in
  summer/winter/transition, daytype in workday/saturday/sunday and mw the
  BDEW H0 value in milliwatts for an annual consumption of 1000 kWh (before
  the daily dynamisation factor). The source repeats the workday profile for
  weekdays 1..5; this script checks that and keeps one copy.
"""
import csv
import os
import sys

src, dst = sys.argv[1], sys.argv[2]

rows = list(csv.DictReader(open(os.path.join(src, "weather_essen_try2010_hourly.csv"))))
assert len(rows) == 8760, len(rows)
ghi = [round(float(r["direct_horizontal_w_m2"]) + float(r["diffuse_horizontal_w_m2"])) for r in rows]
temp = [round(float(r["air_temperature_c"]) * 10) for r in rows]
with open(os.path.join(dst, "weather_essen_utc.csv"), "w") as f:
    f.write("ghi_w_m2,temp_dc\n")
    for k in range(8760):
        i = (k + 1) % 8760  # UTC hour k starts at CET hour k+1, which is source row k+1
        f.write(f"{ghi[i]},{temp[i]}\n")

prof = {}
for r in csv.DictReader(open(os.path.join(src, "household_load_bdew_h0_typical_days.csv"))):
    prof.setdefault((r["period"], int(r["weekday"])), [0] * 96)[int(r["quarter_hour"])] = round(float(r["h0"]) * 1e6)
daytypes = {"workday": 1, "saturday": 6, "sunday": 7}
with open(os.path.join(dst, "h0_profile.csv"), "w") as f:
    f.write("period,daytype,quarter,mw\n")
    for period in ("summer", "winter", "transition"):
        for wd in range(2, 6):
            assert prof[(period, wd)] == prof[(period, 1)], (period, wd)
        for name, wd in daytypes.items():
            for q, v in enumerate(prof[(period, wd)]):
                f.write(f"{period},{name},{q},{v}\n")

# Check: the annual energy with the dynamisation factor, for the 2010 calendar.
import datetime

def period_of(d):
    md = (d.month, d.day)
    if md >= (11, 1) or md <= (3, 20):
        return "winter"
    if (5, 15) <= md <= (9, 14):
        return "summer"
    return "transition"

total = 0.0
day = datetime.date(2010, 1, 1)
for n in range(1, 366):
    f = round(-3.92e-10 * n**4 + 3.2e-7 * n**3 - 7.02e-5 * n**2 + 2.1e-3 * n + 1.24, 4)
    wd = day.isoweekday()
    total += sum(prof[(period_of(day), wd)]) / 1e6 * 0.25 * f
    day += datetime.timedelta(days=1)
print(f"H0 with dynamisation over 2010: {total:.1f} kWh per 1000 kWh nominal")
print(f"GHI sum: {sum(ghi) / 1000:.1f} kWh/m2")
