/**
 * Just enough of the ONNX format (onnx.proto3, protobuf wire encoding) to write a convolutional
 * graph in memory for ONNX Runtime: nodes with int, float and int-list attributes, float32/int64
 * initializers, and fixed-shape float inputs and outputs. ONNX Runtime parses and checks every
 * field when it loads the model, so a wrong tag or type fails loudly, never silently.
 */

/** A node of the graph; attribute values are ints, floats, strings or int lists. */
export interface OnnxNode {
  readonly op: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attrs?: Readonly<Record<string, number | string | readonly number[]>>;
  /** Attributes that hold a float even when the value is a whole number (e.g. Pad's value). */
  readonly floatAttrs?: Readonly<Record<string, number>>;
}

export interface OnnxInitializer {
  readonly name: string;
  readonly dims: readonly number[];
  readonly data: Float32Array | BigInt64Array;
}

export interface OnnxGraph {
  readonly name: string;
  readonly nodes: readonly OnnxNode[];
  readonly initializers: readonly OnnxInitializer[];
  readonly inputs: ReadonlyArray<{ name: string; dims: readonly number[] }>;
  readonly outputs: ReadonlyArray<{ name: string; dims: readonly number[] }>;
}

/** IR version 8 and the default opset 13: both supported by every ONNX Runtime since 1.10. */
const IR_VERSION = 8;
const OPSET = 13;
const FLOAT = 1;
const INT64 = 7;
// AttributeProto.AttributeType
const ATTR = { FLOAT: 1, INT: 2, STRING: 3, INTS: 7 } as const;

/** Serialises `graph` as an ONNX ModelProto. */
export function encodeModel(graph: OnnxGraph): Uint8Array {
  const model = new Writer();
  model.varint(1, IR_VERSION); // ir_version
  model.string(2, 'avatar-lora'); // producer_name
  model.message(7, encodeGraph(graph)); // graph
  model.message(8, new Writer().string(1, '').varint(2, OPSET)); // opset_import
  return model.finish();
}

function encodeGraph(graph: OnnxGraph): Writer {
  const w = new Writer();
  for (const node of graph.nodes) w.message(1, encodeNode(node));
  w.string(2, graph.name);
  for (const init of graph.initializers) {
    const t = new Writer();
    t.packed(1, init.dims);
    t.varint(2, init.data instanceof Float32Array ? FLOAT : INT64);
    t.string(8, init.name);
    t.bytes(9, new Uint8Array(init.data.buffer, init.data.byteOffset, init.data.byteLength)); // raw_data, little-endian
    w.message(5, t);
  }
  for (const input of graph.inputs) w.message(11, valueInfo(input.name, input.dims));
  for (const output of graph.outputs) w.message(12, valueInfo(output.name, output.dims));
  return w;
}

function encodeNode(node: OnnxNode): Writer {
  const w = new Writer();
  for (const input of node.inputs) w.string(1, input);
  for (const output of node.outputs) w.string(2, output);
  w.string(3, node.outputs[0]!);
  w.string(4, node.op);
  for (const [name, value] of Object.entries(node.attrs ?? {})) {
    const a = new Writer().string(1, name);
    if (typeof value === 'string') a.string(4, value).varint(20, ATTR.STRING);
    else if (typeof value === 'number') {
      if (!Number.isInteger(value)) throw new Error(`attribute ${name}=${value}: give float attributes in floatAttrs`);
      a.varint(3, value).varint(20, ATTR.INT);
    } else a.packed(8, value).varint(20, ATTR.INTS);
    w.message(5, a);
  }
  for (const [name, value] of Object.entries(node.floatAttrs ?? {})) w.message(5, new Writer().string(1, name).float(2, value).varint(20, ATTR.FLOAT));
  return w;
}

function valueInfo(name: string, dims: readonly number[]): Writer {
  const shape = new Writer();
  for (const d of dims) shape.message(1, new Writer().varint(1, d)); // Dimension.dim_value
  const tensorType = new Writer().varint(1, FLOAT).message(2, shape);
  return new Writer().string(1, name).message(2, new Writer().message(1, tensorType));
}

/** Protobuf wire format: tags, varints (non-negative here), fixed32 floats and length-delimited fields. */
class Writer {
  private readonly parts: Uint8Array[] = [];
  private length = 0;

  varint(field: number, value: number): this {
    return this.tag(field, 0).raw(varint(value));
  }

  float(field: number, value: number): this {
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setFloat32(0, value, true);
    return this.tag(field, 5).raw(bytes);
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  bytes(field: number, value: Uint8Array): this {
    return this.tag(field, 2).raw(varint(value.length)).raw(value);
  }

  message(field: number, value: Writer): this {
    return this.bytes(field, value.finish());
  }

  /** A packed repeated int64 field. */
  packed(field: number, values: readonly number[]): this {
    const body = new Writer();
    for (const v of values) body.raw(varint(v));
    return this.bytes(field, body.finish());
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let offset = 0;
    for (const part of this.parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }

  private tag(field: number, wireType: number): this {
    return this.raw(varint(field * 8 + wireType));
  }

  private raw(bytes: Uint8Array): this {
    this.parts.push(bytes);
    this.length += bytes.length;
    return this;
  }
}

function varint(value: number): Uint8Array {
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`varint: ${value} is not a non-negative integer`);
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Uint8Array.from(out);
}
