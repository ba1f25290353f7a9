#!/usr/bin/env python3
"""Counts the BPF instructions one packet executes in a loaded XDP program, and on which source
lines: a figure without the noise of timing (BENCHMARKS.md, "Counting instructions").

    xlated_paths.py PROGRAM_NAME [--lines] [--trace] [PACKET ...]

PROGRAM_NAME is a loaded program (`flagtrace_ingress` while `flagtrace attach` or
`cargo xtask bench` runs, `reference_lookup`, `reference_parse`). PACKET is one of tcp_syn_v4,
tcp_rst_v4, tcp_ack_v4, tcp_syn_v6, udp_v4 (all by default).

It reads the program as the kernel rewrote it (`bpftool prog dump xlated ... opcodes`, with map
lookups of arrays and jiffies inlined), and the contents of its one-entry array maps (the data
sections: read-only globals, the reset gate, the watch switch), then interprets the
instructions. The rest is a model of the bench's warm path, not the kernel: every other map is
zeroed memory that persists from run to run, the hash map holds the one flow of the packet (the
first lookup misses and the update helper inserts it), other helpers return 0. Each packet runs
four times and the fourth is counted, so a RST is a flow's repeated RST, as in the bench. A JIT turns most instructions into one x86 instruction; calls into the
kernel (the hash lookup itself) are not counted.
"""
import collections
import json
import re
import struct
import subprocess
import sys

U64 = (1 << 64) - 1


def bpftool(*args):
    return json.loads(subprocess.run(['bpftool', '-j', *args], check=True,
                                     capture_output=True, text=True).stdout)


def program(name):
    """The program's instructions, and the contents of its one-entry array maps by id."""
    info = bpftool('prog', 'show', 'name', name)
    info = info[-1] if isinstance(info, list) else info
    insns, slots = [], {}
    slot = 0
    for entry in bpftool('prog', 'dump', 'xlated', 'id', str(info['id']), 'opcodes'):
        op = entry['opcodes']
        raw = lambda field: bytes(int(byte, 16) for byte in op[field])
        insn = dict(entry=entry, code=int(op['code'], 16), dst=int(op['dst_reg'], 16),
                    src=int(op['src_reg'], 16),
                    off=int.from_bytes(raw('off'), 'little', signed=True),
                    imm=int.from_bytes(raw('imm'), 'little', signed=True), slot=slot)
        slots[slot] = len(insns)
        insns.append(insn)
        slot += 2 if insn['code'] == 0x18 else 1
    data, sizes = {}, {}
    for map_id in info.get('map_ids', []):
        meta = bpftool('map', 'show', 'id', str(map_id))
        sizes[f'array{map_id}'] = (meta['bytes_key'], meta['bytes_value'])
        if meta['type'] == 'array' and meta['max_entries'] == 1:
            value = bpftool('map', 'dump', 'id', str(map_id))[0]['value']
            data[map_id] = bytes(int(byte, 16) for byte in value)
    return insns, slots, data, sizes


class Ptr:
    """A pointer into a named region of the model's memory."""
    __slots__ = ('region', 'offset')

    def __init__(self, region, offset):
        self.region, self.offset = region, offset

    def moved(self, by):
        return Ptr(self.region, self.offset + by)


# Where a hash map element's key starts (struct htab_elem's header, as the verifier's inlined
# lookups on this kernel add it); its value follows the key, rounded up to 8 bytes.
HTAB_ELEM_KEY_OFFSET = 48


class Machine:
    def __init__(self, insns, slots, data, sizes):
        self.insns, self.slots, self.sizes = insns, slots, sizes
        self.memory = {}
        self.pointers = {}
        self.flow_inserted = False
        for map_id, value in data.items():
            for i, byte in enumerate(value):
                self.memory[(f'value{map_id}', i)] = byte

    def load(self, ptr, size):
        region, offset = ptr.region, ptr.offset
        if region == 'ctx':  # struct xdp_buff as the verifier rewrote the xdp_md accesses
            return {0: Ptr('packet', 0), 8: Ptr('packet', self.packet_len),
                    32: Ptr('rxq', 0)}.get(offset, 0)
        if region == 'rxq':
            return Ptr('netdev', 0)
        if region == 'netdev':
            return 1
        if region == 'kernel':  # jiffies
            return 4_295_000_000 + self.run_index
        if size == 8 and (region, offset) in self.pointers:
            return self.pointers[(region, offset)]
        if region.startswith('array') and size == 8 and (region, offset) not in self.memory:
            return Ptr('percpu-' + region + str(offset), 0)  # a per-CPU array's value pointer
        return int.from_bytes(bytes(self.memory.get((region, offset + i), 0)
                                    for i in range(size)), 'little')

    def store(self, ptr, size, value):
        key = (ptr.region, ptr.offset)
        if isinstance(value, Ptr):
            self.pointers[key] = value
            value = 0
        else:
            self.pointers.pop(key, None)
        for i in range(size):
            self.memory[(ptr.region, ptr.offset + i)] = (value >> (8 * i)) & 0xff

    def run(self, packet, run_index, lines=None, trace=None):
        self.packet_len, self.run_index = len(packet), run_index
        for i, byte in enumerate(packet):
            self.memory[('packet', i)] = byte
        reg = [0] * 11
        reg[1], reg[10] = Ptr('ctx', 0), Ptr('stack', 0)
        pc, count, line = 0, 0, '?'
        while True:
            insn = self.insns[pc]
            entry = insn['entry']
            line = entry.get('src', line).strip()
            count += 1
            if lines is not None:
                lines[line] += 1
            if trace is not None:
                trace.append(insn)
            code, dst, src, off, imm = (insn[k] for k in ('code', 'dst', 'src', 'off', 'imm'))
            cls, op = code & 7, code & 0xf0
            following = pc + 1
            if cls in (4, 7):
                reg[dst] = self.alu(cls, op, code, reg[dst], reg[src] if code & 8 else imm & U64,
                                    imm)
            elif code == 0x18:
                text = entry['disasm']
                found = re.search(r'map\[id:(\d+)\](?:\[0\]\+(\d+))?', text)
                if found and found.group(2) is not None:
                    reg[dst] = Ptr(f'value{found.group(1)}', int(found.group(2)))
                elif found:
                    reg[dst] = Ptr(f'array{found.group(1)}', 0)
                else:
                    reg[dst] = Ptr('kernel', 0)
            elif cls == 1:
                size = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[code & 0x18]
                reg[dst] = self.load(reg[src].moved(off), size)
            elif cls in (2, 3):
                size = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[code & 0x18]
                value = reg[src] if cls == 3 else imm & U64
                target = reg[dst].moved(off)
                if code & 0xe0 == 0xc0:  # atomic add
                    value = (self.load(target, size) + value) & ((1 << 8 * size) - 1)
                self.store(target, size, value)
            elif op == 0x00:
                following = self.slots[insn['slot'] + 1 + off]
            elif op == 0x90:
                return count, reg[0]
            elif op == 0x80:
                reg[0] = self.helper(entry['disasm'], reg)
                for r in range(1, 6):
                    reg[r] = 0
            elif self.jump(cls, op, reg[dst], reg[src] if code & 8 else imm & U64):
                following = self.slots[insn['slot'] + 1 + off]
            pc = following

    def helper(self, name, reg):
        """The flow-table lookup and insert of the packet's one flow; 0 from anything else."""
        if 'htab_map_lookup' in name:
            return Ptr('flow', 0) if self.flow_inserted else 0
        if 'update_elem' in name and reg[1].region in self.sizes:
            key_size, value_size = self.sizes[reg[1].region]
            value_at = HTAB_ELEM_KEY_OFFSET + (key_size + 7) // 8 * 8
            for i in range(value_size):
                byte = self.load(reg[3].moved(i), 1)
                self.store(Ptr('flow', value_at + i), 1, byte)
            self.flow_inserted = True
        return 0

    @staticmethod
    def alu(cls, op, code, a, b, imm):
        bits = 32 if cls == 4 else 64
        if op == 0xb0:  # mov (off 1 on a per-CPU pointer: this CPU's address, the same here)
            return b & ((1 << bits) - 1) if isinstance(b, int) else b
        if op == 0xd0:  # byte swap
            width = imm
            value = a & ((1 << width) - 1)
            return int.from_bytes(value.to_bytes(width // 8, 'little'), 'big') if code & 8 \
                else value
        if isinstance(a, Ptr):
            signed = b - (1 << 64) if b >> 63 else b
            return a.moved(signed if op == 0x00 else -signed)
        if isinstance(b, Ptr):
            return b.moved(a) if op == 0x00 else a - b.offset
        mask = (1 << bits) - 1
        a, b = a & mask, b & mask
        signed_a = a - (1 << bits) if a >> (bits - 1) else a
        shift = b & (bits - 1)
        result = {0x00: a + b, 0x10: a - b, 0x20: a * b, 0x30: a // b if b else 0,
                  0x40: a | b, 0x50: a & b, 0x60: a << shift, 0x70: a >> shift, 0x80: -a,
                  0x90: a % b if b else a, 0xa0: a ^ b, 0xc0: signed_a >> shift}[op]
        return result & mask

    @staticmethod
    def jump(cls, op, a, b):
        if isinstance(a, Ptr) and isinstance(b, Ptr):
            a, b = a.offset, b.offset
        else:  # a pointer against a number: only null checks
            a = 1 if isinstance(a, Ptr) else a
            b = 1 if isinstance(b, Ptr) else b
        bits = 32 if cls == 6 else 64
        a, b = a & ((1 << bits) - 1), b & ((1 << bits) - 1)
        sa = a - (1 << bits) if a >> (bits - 1) else a
        sb = b - (1 << bits) if b >> (bits - 1) else b
        return {0x10: a == b, 0x20: a > b, 0x30: a >= b, 0x40: bool(a & b), 0x50: a != b,
                0x60: sa > sb, 0x70: sa >= sb, 0xa0: a < b, 0xb0: a <= b, 0xc0: sa < sb,
                0xd0: sa <= sb}[op]


def packet(kind):
    """A frame like the bench's: Ethernet, IPv4 or IPv6, TCP or UDP, no payload."""
    eth = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1])
    v4 = lambda protocol, l4: struct.pack('>BBHHHBBH4s4s', 0x45, 0, 20 + len(l4), 7, 0x4000, 64,
                                          protocol, 0, bytes([10, 0, 0, 1]),
                                          bytes([10, 0, 0, 2])) + l4
    if kind == 'udp_v4':
        return eth + b'\x08\x00' + v4(17, struct.pack('>HHHH', 40000, 53, 8, 0))
    flags = {'tcp_syn': 0x02, 'tcp_rst': 0x14, 'tcp_ack': 0x10}[kind[:7]]
    tcp = struct.pack('>HHIIBBHHH', 40000, 443, 1000, 1, 0x50, flags, 64240, 0, 0)
    if kind.endswith('v6'):
        ip = struct.pack('>IHBB', 0x6000_0000, len(tcp), 6, 64) + bytes(range(32))
        return eth + b'\x86\xdd' + ip + tcp
    return eth + b'\x08\x00' + v4(6, tcp)


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith('-'):
        sys.exit(__doc__)
    name, options = args[0], {a for a in args[1:] if a.startswith('--')}
    kinds = [a for a in args[1:] if not a.startswith('--')] or \
        ['tcp_syn_v4', 'tcp_rst_v4', 'tcp_ack_v4', 'tcp_syn_v6', 'udp_v4']
    insns, slots, data, sizes = program(name)
    for kind in kinds:
        machine = Machine(insns, slots, data, sizes)
        for run_index in range(3):
            machine.run(packet(kind), run_index)
        lines, trace = collections.Counter(), []
        count, _ = machine.run(packet(kind), 3, lines, trace)
        print(f'{name} {kind}: {count} instructions')
        if '--lines' in options:
            for line, n in lines.most_common():
                print(f'  {n:4d}  {line[:100]}')
        if '--trace' in options:
            for insn in trace:
                if 'src' in insn['entry']:
                    print(f"        ; {insn['entry']['src'].strip()[:100]}")
                print(f"  {insn['slot']:5d}: {insn['entry']['disasm']}")


if __name__ == '__main__':
    main()
