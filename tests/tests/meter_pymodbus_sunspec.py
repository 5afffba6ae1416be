#!/usr/bin/env python3
"""A SunSpec device served by pymodbus, an independent Modbus implementation,
with a layout the project's simulator never produces.

Layout (unit 1), offsets from the SunSpec model definitions:
- nothing at 0 and 40000 (pymodbus answers IllegalAddress there), the "SunS"
  marker at 50000;
- common (1, length 66): manufacturer "PyModbusCo", serial "PM-0042";
- nameplate (120, length 26): a model a client may know but need not read;
- vendor model 64900 (length 9), full of junk: must be skipped by length;
- three-phase wye float meter (213, length 124): W = -1500.6 (export),
  TotWhExp = 7890, TotWhImp = 123456;
- single-phase float inverter (111, length 60): W = 2500, WH = 1e6, St = 4;
- basic storage (124, length 24): ChaState = 573 with ChaState_SF = -1;
- end model (0xFFFF, 0).

Usage: meter_pymodbus_sunspec.py PORT (0: pick a free port). Prints
"PORT <n>" once the server accepts connections.
"""
import asyncio
import socket
import struct
import sys

from pymodbus.datastore import (ModbusDeviceContext, ModbusSequentialDataBlock,
                                ModbusServerContext)
from pymodbus.server import ModbusTcpServer


def f32(v):
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def text(s, words):
    b = s.encode().ljust(words * 2, b"\0")
    return [int.from_bytes(b[i:i + 2], "big") for i in range(0, words * 2, 2)]


def model(mid, length, points):
    body = [0] * length
    for off, words in points:
        body[off:off + len(words)] = words
    return [mid, length] + body


def layout():
    regs = [0x5375, 0x6E53]  # "SunS"
    regs += model(1, 66, [(0, text("PyModbusCo", 16)), (16, text("PM-Meter", 16)),
                          (48, text("PM-0042", 16)), (64, [1])])
    regs += model(120, 26, [(0, [4]), (1, [5000]), (2, [0])])
    regs += model(64900, 9, [(0, [0xDEAD] * 9)])
    nan = f32(float("nan"))
    meter = [(0, f32(6.5))] + [(o, nan) for o in range(2, 26, 2)]
    meter += [(24, f32(50.0)), (26, f32(-1500.6)), (58, f32(7890.0)), (66, f32(123456.0))]
    regs += model(213, 124, meter)
    regs += model(111, 60, [(20, f32(2500.0)), (22, f32(50.0)), (30, f32(1.0e6)), (46, [4])])
    regs += model(124, 24, [(0, [3000]), (6, [573]), (16, [0]), (20, [0xFFFF])])
    regs += [0xFFFF, 0]
    return regs


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if port == 0:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    # pymodbus' sequential blocks are addressed one above the protocol
    # address: protocol register 50000 is block address 50001.
    block = ModbusSequentialDataBlock(50001, layout())
    device = ModbusDeviceContext(hr=block)
    context = ModbusServerContext(devices={1: device}, single=False)
    server = ModbusTcpServer(context, address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever())
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    print(f"PORT {port}", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main())
