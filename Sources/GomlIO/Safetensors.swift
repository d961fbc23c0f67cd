// Safetensors.swift — the safetensors file format: a validating reader and a writer.
//
// Holds: `SafetensorsFile` (parse + validate a whole file held in memory, typed
// views of its tensors), `SafetensorsWriter` (build a file in memory), and the
// small strict JSON parser the header needs.
// Must not: trust any number in a file before checking it (no force unwraps on
// file data, no trapping arithmetic, no allocation sized by header numbers),
// know anything about the model (names and shapes are the caller's business),
// or depend on GomlCore.
//
// Format (docs/model.md, "safetensors, as the reference implementation reads it"):
//   [8-byte little-endian u64 N][N bytes UTF-8 JSON object, space padded][data area]
// Each tensor entry: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
// with offsets relative to the data area; optional "__metadata__": {string: string}.
// Sorted by offset, the tensors must tile the data area exactly. Data is raw
// little-endian.

import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Types

/// Element types a safetensors file may hold.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .F64, .I64, .U64: return 8
        case .F32, .I32, .U32: return 4
        case .F16, .BF16, .I16, .U16: return 2
        case .I8, .U8, .BOOL, .F8_E4M3, .F8_E5M2: return 1
        }
    }
}

/// A safetensors problem; `message` is one line naming it.
public struct SafetensorsError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One tensor's entry in the header.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// Byte range relative to the start of the data area.
    public let byteRange: Range<Int>

    /// Product of `shape` (1 for a scalar `[]`). Validated not to overflow when read.
    public var elementCount: Int {
        var n = 1
        for d in shape { n = n &* d }
        return n
    }
}

// MARK: - Reader

/// A whole safetensors file, validated on construction.
public struct SafetensorsFile: Sendable {
    /// Largest header accepted (the reference implementation's limit).
    public static let maxHeaderLength = 100_000_000

    public let metadata: [String: String]
    public let tensors: [String: SafetensorsTensorInfo]
    /// Tensor names sorted by offset in the data area.
    public var names: [String] { orderedNames }

    private let orderedNames: [String]
    private let storage: [UInt8]
    private let dataStart: Int

    /// Parses and validates `bytes` (the whole file). Throws `SafetensorsError`.
    public init(bytes: [UInt8]) throws {
        let total = bytes.count
        guard total >= 8 else {
            throw SafetensorsError(
                "file is \(total) bytes, shorter than the 8-byte header length (truncated or not a safetensors file?)")
        }
        var n: UInt64 = 0
        for k in 0..<8 { n |= UInt64(bytes[k]) << UInt64(8 * k) }
        // Validate N before touching the header, so a bad N cannot drive an allocation.
        guard n <= UInt64(Self.maxHeaderLength) else {
            throw SafetensorsError(
                "header length \(n) exceeds the 100 MB limit (\(Self.maxHeaderLength) bytes); not a safetensors file?")
        }
        let headerLength = Int(n)
        guard headerLength <= total - 8 else {
            throw SafetensorsError(
                "header length \(n) exceeds file size \(total) (needs \(headerLength + 8) bytes with the prefix; truncated file?)")
        }
        let dataStart = 8 + headerLength
        let dataLength = total - dataStart

        var parser = HeaderParser(bytes: bytes, start: 8, end: dataStart)
        let root = try parser.parseDocument()
        guard case .object(let entries) = root else {
            throw SafetensorsError("header is not a JSON object (found \(root.kindName))")
        }

        var metadata: [String: String] = [:]
        var tensors: [String: SafetensorsTensorInfo] = [:]
        tensors.reserveCapacity(entries.count)
        for (key, value) in entries {
            if key == "__metadata__" {
                metadata = try Self.parseMetadata(value)
            } else {
                let info = try Self.parseEntry(name: key, value)
                guard info.byteRange.upperBound <= dataLength else {
                    throw SafetensorsError(
                        "tensor \(quoted(key)): data_offsets end \(info.byteRange.upperBound) is beyond the data area of \(dataLength) bytes (out of range; truncated file?)")
                }
                tensors[key] = info
            }
        }

        // Sorted by (begin, end, name), the tensors must tile [0, dataLength) exactly.
        let ordered = tensors.values.sorted { a, b in
            if a.byteRange.lowerBound != b.byteRange.lowerBound {
                return a.byteRange.lowerBound < b.byteRange.lowerBound
            }
            if a.byteRange.upperBound != b.byteRange.upperBound {
                return a.byteRange.upperBound < b.byteRange.upperBound
            }
            return a.name < b.name
        }
        var covered = 0
        var previous: SafetensorsTensorInfo? = nil
        for t in ordered {
            let r = t.byteRange
            if r.lowerBound < covered, let p = previous {
                throw SafetensorsError(
                    "tensors \(quoted(p.name)) [\(p.byteRange.lowerBound), \(p.byteRange.upperBound)) and \(quoted(t.name)) [\(r.lowerBound), \(r.upperBound)) overlap")
            }
            if r.lowerBound > covered {
                let after = previous.map { "after tensor \(quoted($0.name))" } ?? "at the start of the data area"
                throw SafetensorsError(
                    "hole in data area: bytes [\(covered), \(r.lowerBound)) \(after), before tensor \(quoted(t.name)), belong to no tensor")
            }
            covered = r.upperBound
            previous = t
        }
        guard covered == dataLength else {
            throw SafetensorsError(
                "data area is \(dataLength) bytes but the tensors cover \(covered) (data area length mismatch; trailing bytes?)")
        }

        self.metadata = metadata
        self.tensors = tensors
        self.orderedNames = ordered.map(\.name)
        self.storage = bytes
        self.dataStart = dataStart
    }

    /// Reads and validates the file at `path`. Errors are prefixed with the path.
    public init(path: String) throws {
        do {
            self = try SafetensorsFile(bytes: readWholeFile(path))
        } catch let e as SafetensorsError {
            throw SafetensorsError("\(path): \(e.message)")
        }
    }

    /// The entry for `name`; throws if there is none.
    public func tensor(_ name: String) throws -> SafetensorsTensorInfo {
        guard let t = tensors[name] else { throw SafetensorsError("no tensor named \(quoted(name))") }
        return t
    }

    /// A new array with the values of F32 tensor `name`.
    public func floats(_ name: String) throws -> [Float] {
        let t = try tensor(name, requiring: .F32)
        return [Float](unsafeUninitializedCapacity: t.elementCount) { buffer, initialized in
            copyData(of: t, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = t.elementCount
            #if _endian(big)
            for k in 0..<initialized { buffer[k] = Float(bitPattern: UInt32(littleEndian: buffer[k].bitPattern)) }
            #endif
        }
    }

    /// A new array with the values of I32 tensor `name`.
    public func int32s(_ name: String) throws -> [Int32] {
        let t = try tensor(name, requiring: .I32)
        return [Int32](unsafeUninitializedCapacity: t.elementCount) { buffer, initialized in
            copyData(of: t, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = t.elementCount
            #if _endian(big)
            for k in 0..<initialized { buffer[k] = Int32(littleEndian: buffer[k]) }
            #endif
        }
    }

    /// Overwrites `destination` with F32 tensor `name`; the element counts must match exactly.
    public func copyFloats(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let t = try tensor(name, requiring: .F32)
        guard destination.count == t.elementCount else {
            throw SafetensorsError(
                "tensor \(quoted(name)) has \(t.elementCount) elements (shape \(t.shape)) but the destination holds \(destination.count)")
        }
        copyData(of: t, into: UnsafeMutableRawBufferPointer(destination))
        #if _endian(big)
        for k in 0..<destination.count {
            destination[k] = Float(bitPattern: UInt32(littleEndian: destination[k].bitPattern))
        }
        #endif
    }

    /// The raw little-endian bytes of tensor `name` (a slice of the file, no copy).
    public func rawBytes(_ name: String) throws -> ArraySlice<UInt8> {
        let t = try tensor(name)
        return storage[(dataStart + t.byteRange.lowerBound)..<(dataStart + t.byteRange.upperBound)]
    }

    // MARK: private

    private func tensor(_ name: String, requiring dtype: SafetensorsDType) throws -> SafetensorsTensorInfo {
        let t = try tensor(name)
        guard t.dtype == dtype else {
            throw SafetensorsError("tensor \(quoted(name)) has dtype \(t.dtype.rawValue), expected \(dtype.rawValue)")
        }
        return t
    }

    /// memcpy of the tensor's bytes; `destination` must be exactly `byteRange.count` bytes.
    private func copyData(of t: SafetensorsTensorInfo, into destination: UnsafeMutableRawBufferPointer) {
        precondition(destination.count == t.byteRange.count)
        storage.withUnsafeBytes { source in
            let from = dataStart + t.byteRange.lowerBound
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[from..<(from + t.byteRange.count)]))
        }
    }

    private static func parseMetadata(_ value: JSONValue) throws -> [String: String] {
        switch value {
        case .null:
            return [:]
        case .object(let pairs):
            var result: [String: String] = [:]
            for (k, v) in pairs {
                guard case .string(let s) = v else {
                    throw SafetensorsError("__metadata__ value for key \(quoted(k)) is not a string (found \(v.kindName))")
                }
                result[k] = s
            }
            return result
        default:
            throw SafetensorsError("__metadata__ is not an object (found \(value.kindName))")
        }
    }

    private static func parseEntry(name: String, _ value: JSONValue) throws -> SafetensorsTensorInfo {
        let where_ = "tensor \(quoted(name))"
        guard case .object(let fields) = value else {
            throw SafetensorsError("\(where_): entry is not an object (found \(value.kindName))")
        }
        func field(_ key: String) throws -> JSONValue {
            guard let v = fields.first(where: { $0.0 == key })?.1 else {
                throw SafetensorsError("\(where_): missing field \"\(key)\"")
            }
            return v
        }

        guard case .string(let dtypeName) = try field("dtype") else {
            throw SafetensorsError("\(where_): field \"dtype\" is not a string (found \(try field("dtype").kindName))")
        }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
            throw SafetensorsError("\(where_): unknown dtype \(quoted(dtypeName))")
        }

        let shapeValue = try field("shape")
        guard case .array(let shapeItems) = shapeValue else {
            throw SafetensorsError("\(where_): field \"shape\" is not a list (found \(shapeValue.kindName))")
        }
        var shape: [Int] = []
        shape.reserveCapacity(shapeItems.count)
        for (k, item) in shapeItems.enumerated() {
            shape.append(try nonNegativeInt(item, "\(where_): shape[\(k)]"))
        }

        let offsetsValue = try field("data_offsets")
        guard case .array(let offsetItems) = offsetsValue else {
            throw SafetensorsError("\(where_): field \"data_offsets\" is not a list (found \(offsetsValue.kindName))")
        }
        guard offsetItems.count == 2 else {
            throw SafetensorsError("\(where_): data_offsets must have 2 entries [begin, end], found \(offsetItems.count)")
        }
        let begin = try nonNegativeInt(offsetItems[0], "\(where_): data_offsets begin")
        let end = try nonNegativeInt(offsetItems[1], "\(where_): data_offsets end")
        guard begin <= end else {
            throw SafetensorsError("\(where_): data_offsets begin \(begin) > end \(end) (out of order)")
        }

        var count = 1
        if !shape.contains(0) {
            for d in shape {
                let (p, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow else {
                    throw SafetensorsError("\(where_): element count of shape \(shape) overflows")
                }
                count = p
            }
        } else {
            count = 0
        }
        let (needed, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow else {
            throw SafetensorsError("\(where_): byte size of \(dtype.rawValue) shape \(shape) overflows")
        }
        guard end - begin == needed else {
            throw SafetensorsError(
                "\(where_): data_offsets [\(begin), \(end)) hold \(end - begin) bytes but \(dtype.rawValue) shape \(shape) needs \(needed) (size mismatch)")
        }
        return SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, byteRange: begin..<end)
    }

    private static func nonNegativeInt(_ value: JSONValue, _ what: String) throws -> Int {
        switch value {
        case .number(.int(let x)): return x
        case .number(.negative(let text)): throw SafetensorsError("\(what) is negative (\(text))")
        case .number(.fractional(let text)): throw SafetensorsError("\(what) is not an integer (\(text))")
        case .number(.tooLarge(let text)): throw SafetensorsError("\(what) is too large (\(text))")
        default: throw SafetensorsError("\(what) is not a number (found \(value.kindName))")
        }
    }
}

/// The whole file as bytes; errors name the failing call's reason, without the path.
private func readWholeFile(_ path: String) throws -> [UInt8] {
    func reason() -> String { String(cString: strerror(errno)) }
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw SafetensorsError("cannot open file (\(reason()))") }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw SafetensorsError("cannot stat file (\(reason()))") }
    let size = Int(info.st_size)
    guard size >= 0 else { throw SafetensorsError("file has negative size \(size)") }
    var failure: String? = nil
    let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
        var got = 0
        while got < size, let base = buffer.baseAddress {
            let r = read(fd, base + got, size - got)
            if r < 0 {
                if errno == EINTR { continue }
                failure = reason()
                break
            }
            if r == 0 { break }  // file shrank while reading; validation will see a short file
            got += r
        }
        initialized = got
    }
    if let failure { throw SafetensorsError("cannot read file (\(failure))") }
    return bytes
}

// MARK: - Writer

/// Builds a safetensors file in memory: tensors sorted by name, contiguous offsets,
/// header space-padded so the data area starts 8-byte aligned.
public struct SafetensorsWriter: Sendable {
    private struct Entry: Sendable {
        let dtype: SafetensorsDType
        let shape: [Int]
        let bytes: [UInt8]
    }

    public var metadata: [String: String]
    private var entries: [String: Entry] = [:]

    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata
    }

    /// Adds a tensor from raw little-endian bytes; throws on a duplicate or reserved
    /// name, a negative dimension, or a byte count that does not match dtype × shape.
    public mutating func add(_ name: String, dtype: SafetensorsDType, shape: [Int], bytes: [UInt8]) throws {
        guard name != "__metadata__" else {
            throw SafetensorsError("tensor name \"__metadata__\" is reserved")
        }
        guard entries[name] == nil else {
            throw SafetensorsError("duplicate tensor name \(quoted(name))")
        }
        let count = try Self.elementCount(name, shape)
        let (needed, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow else {
            throw SafetensorsError("tensor \(quoted(name)): byte size of \(dtype.rawValue) shape \(shape) overflows")
        }
        guard bytes.count == needed else {
            throw SafetensorsError(
                "tensor \(quoted(name)): got \(bytes.count) bytes but \(dtype.rawValue) shape \(shape) needs \(needed) (size mismatch)")
        }
        entries[name] = Entry(dtype: dtype, shape: shape, bytes: bytes)
    }

    /// Adds an F32 tensor; `values.count` must equal the shape's element count.
    public mutating func addFloats(_ name: String, shape: [Int], _ values: UnsafeBufferPointer<Float>) throws {
        var bytes = [UInt8](UnsafeRawBufferPointer(values))
        #if _endian(big)
        bytes = Self.swapEach(bytes, width: 4)
        #endif
        try checkCount(name, shape, values.count)
        try add(name, dtype: .F32, shape: shape, bytes: bytes)
    }

    /// Adds an F32 tensor from an array.
    public mutating func addFloats(_ name: String, shape: [Int], _ values: [Float]) throws {
        try values.withUnsafeBufferPointer { try addFloats(name, shape: shape, $0) }
    }

    /// Adds an I32 tensor; `values.count` must equal the shape's element count.
    public mutating func addInt32s(_ name: String, shape: [Int], _ values: [Int32]) throws {
        var bytes = values.withUnsafeBytes { [UInt8]($0) }
        #if _endian(big)
        bytes = Self.swapEach(bytes, width: 4)
        #endif
        try checkCount(name, shape, values.count)
        try add(name, dtype: .I32, shape: shape, bytes: bytes)
    }

    /// The complete file.
    public func serialized() -> [UInt8] {
        let names = entries.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        var header: [UInt8] = []
        header.append(UInt8(ascii: "{"))
        var first = true
        if !metadata.isEmpty {
            appendJSONString("__metadata__", to: &header)
            header.append(contentsOf: Array(":{".utf8))
            let keys = metadata.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            for (k, key) in keys.enumerated() {
                if k > 0 { header.append(UInt8(ascii: ",")) }
                appendJSONString(key, to: &header)
                header.append(UInt8(ascii: ":"))
                appendJSONString(metadata[key] ?? "", to: &header)
            }
            header.append(UInt8(ascii: "}"))
            first = false
        }
        var offset = 0
        for name in names {
            guard let e = entries[name] else { continue }
            if !first { header.append(UInt8(ascii: ",")) }
            first = false
            appendJSONString(name, to: &header)
            let shape = e.shape.map(String.init).joined(separator: ",")
            let end = offset + e.bytes.count
            header.append(contentsOf: Array(
                ":{\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(end)]}".utf8))
            offset = end
        }
        header.append(UInt8(ascii: "}"))
        while header.count % 8 != 0 { header.append(UInt8(ascii: " ")) }

        var out: [UInt8] = []
        out.reserveCapacity(8 + header.count + offset)
        let n = UInt64(header.count)
        for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> UInt64(8 * k))) }
        out.append(contentsOf: header)
        for name in names {
            if let e = entries[name] { out.append(contentsOf: e.bytes) }
        }
        return out
    }

    /// Writes `serialized()` to `path` atomically and durably (see DurableFile).
    public func write(toPath path: String) throws {
        try DurableFile.write(serialized(), to: path)
    }

    // MARK: private

    private static func elementCount(_ name: String, _ shape: [Int]) throws -> Int {
        var count = 1
        for (k, d) in shape.enumerated() {
            guard d >= 0 else { throw SafetensorsError("tensor \(quoted(name)): shape[\(k)] is negative (\(d))") }
        }
        if shape.contains(0) { return 0 }
        for d in shape {
            let (p, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow else { throw SafetensorsError("tensor \(quoted(name)): element count of shape \(shape) overflows") }
            count = p
        }
        return count
    }

    private func checkCount(_ name: String, _ shape: [Int], _ given: Int) throws {
        let count = try Self.elementCount(name, shape)
        guard count == given else {
            throw SafetensorsError("tensor \(quoted(name)): got \(given) values but shape \(shape) needs \(count) (size mismatch)")
        }
    }

    #if _endian(big)
    private static func swapEach(_ bytes: [UInt8], width: Int) -> [UInt8] {
        var out = bytes
        var i = 0
        while i + width <= out.count {
            out[i..<(i + width)].reverse()
            i += width
        }
        return out
    }
    #endif
}

// MARK: - JSON

/// `"name"` with JSON escaping, for error messages.
private func quoted(_ s: String) -> String {
    var bytes: [UInt8] = []
    appendJSONString(s, to: &bytes)
    return String(decoding: bytes, as: UTF8.self)
}

/// Appends `s` as a JSON string literal (quotes, backslashes and control characters escaped;
/// other characters as raw UTF-8).
private func appendJSONString(_ s: String, to out: inout [UInt8]) {
    let hex: [UInt8] = Array("0123456789abcdef".utf8)
    out.append(UInt8(ascii: "\""))
    for c in s.utf8 {
        switch c {
        case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
        case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
        case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
        case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
        case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
        case 0x08: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
        case 0x0C: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
        case 0..<0x20:
            out.append(contentsOf: Array("\\u00".utf8))
            out.append(hex[Int(c >> 4)])
            out.append(hex[Int(c & 0xF)])
        default: out.append(c)
        }
    }
    out.append(UInt8(ascii: "\""))
}

/// A JSON number, classified for the header's needs (non-negative integers that fit in Int).
private enum JSONNumber: Sendable {
    case int(Int)
    case negative(String)
    case fractional(String)
    case tooLarge(String)
}

/// A parsed JSON value; objects keep document order (duplicate keys are rejected).
private enum JSONValue: Sendable {
    case object([(String, JSONValue)])
    case array([JSONValue])
    case string(String)
    case number(JSONNumber)
    case bool(Bool)
    case null

    var kindName: String {
        switch self {
        case .object: return "object"
        case .array: return "array"
        case .string: return "string"
        case .number: return "number"
        case .bool: return "boolean"
        case .null: return "null"
        }
    }
}

/// A strict RFC 8259 parser over `bytes[start..<end]`; every read is bounds-checked,
/// nesting is limited, strings must be valid UTF-8.
private struct HeaderParser {
    private let bytes: [UInt8]
    private let start: Int
    private let end: Int
    private var i: Int
    private var depth = 0
    private static let maxDepth = 64

    init(bytes: [UInt8], start: Int, end: Int) {
        self.bytes = bytes
        self.start = start
        self.end = end
        self.i = start
    }

    /// One value, surrounded only by JSON whitespace (the trailing space padding).
    mutating func parseDocument() throws -> JSONValue {
        skipWhitespace()
        guard i < end else { throw SafetensorsError("header is not valid JSON: it is empty or only whitespace") }
        let value = try parseValue()
        skipWhitespace()
        guard i == end else { throw fail("unexpected \(describe(bytes[i])) after the JSON value") }
        return value
    }

    private func fail(_ what: String) -> SafetensorsError {
        SafetensorsError("header is not valid JSON: \(what) at header byte \(i - start)")
    }

    private func describe(_ c: UInt8) -> String {
        if c >= 0x21 && c < 0x7F { return "character '\(Character(Unicode.Scalar(c)))'" }
        return "byte 0x\(String(c, radix: 16))"
    }

    private mutating func skipWhitespace() {
        while i < end {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    private mutating func parseValue() throws -> JSONValue {
        guard i < end else { throw fail("unexpected end of header") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail("unexpected \(describe(bytes[i]))")
        }
    }

    private mutating func expectLiteral(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard end - i >= n else { throw fail("unexpected end of header") }
        let ok = word.withUTF8Buffer { w in (0..<n).allSatisfy { bytes[i + $0] == w[$0] } }
        guard ok else { throw fail("invalid literal") }
        i += n
    }

    private mutating func enter() throws {
        depth += 1
        guard depth <= Self.maxDepth else { throw fail("nesting deeper than \(Self.maxDepth)") }
    }

    private mutating func parseObject() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        i += 1  // {
        var pairs: [(String, JSONValue)] = []
        var seen = Set<String>()
        skipWhitespace()
        if i < end && bytes[i] == UInt8(ascii: "}") { i += 1; return .object(pairs) }
        while true {
            guard i < end else { throw fail("unexpected end of header in object") }
            guard bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string key, found \(describe(bytes[i]))") }
            let key = try parseString()
            guard seen.insert(key).inserted else {
                throw SafetensorsError("header has duplicate key \(quoted(key))")
            }
            skipWhitespace()
            guard i < end, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':' after key") }
            i += 1
            skipWhitespace()
            pairs.append((key, try parseValue()))
            skipWhitespace()
            guard i < end else { throw fail("unexpected end of header in object") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; skipWhitespace(); continue }
            if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(pairs) }
            throw fail("expected ',' or '}' in object, found \(describe(bytes[i]))")
        }
    }

    private mutating func parseArray() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        i += 1  // [
        var items: [JSONValue] = []
        skipWhitespace()
        if i < end && bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
        while true {
            items.append(try parseValue())
            skipWhitespace()
            guard i < end else { throw fail("unexpected end of header in list") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; skipWhitespace(); continue }
            if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            throw fail("expected ',' or ']' in list, found \(describe(bytes[i]))")
        }
    }

    private static func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }

    private mutating func parseNumber() throws -> JSONValue {
        let numberStart = i
        var negative = false
        if bytes[i] == UInt8(ascii: "-") { negative = true; i += 1 }
        guard i < end, Self.isDigit(bytes[i]) else { throw fail("invalid number") }
        var value = 0
        var overflow = false
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
            if i < end && Self.isDigit(bytes[i]) { throw fail("number with a leading zero") }
        } else {
            while i < end && Self.isDigit(bytes[i]) {
                if !overflow {
                    let (m, o1) = value.multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.addingReportingOverflow(Int(bytes[i] - UInt8(ascii: "0")))
                    if o1 || o2 { overflow = true } else { value = s }
                }
                i += 1
            }
        }
        var fractional = false
        if i < end && bytes[i] == UInt8(ascii: ".") {
            fractional = true
            i += 1
            guard i < end, Self.isDigit(bytes[i]) else { throw fail("invalid number (no digits after '.')") }
            while i < end && Self.isDigit(bytes[i]) { i += 1 }
        }
        if i < end && (bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E")) {
            fractional = true
            i += 1
            if i < end && (bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-")) { i += 1 }
            guard i < end, Self.isDigit(bytes[i]) else { throw fail("invalid number (no digits in exponent)") }
            while i < end && Self.isDigit(bytes[i]) { i += 1 }
        }
        // Messages quote the literal; cap it so a megabyte of digits stays one readable line.
        let textEnd = min(i, numberStart + 40)
        let text = String(decoding: bytes[numberStart..<textEnd], as: UTF8.self) + (textEnd < i ? "…" : "")
        if fractional { return .number(.fractional(text)) }
        if negative && (overflow || value != 0) { return .number(.negative(text)) }
        if overflow { return .number(.tooLarge(text)) }
        return .number(.int(value))
    }

    private mutating func parseString() throws -> String {
        i += 1  // opening quote
        let stringStart = i
        var ascii = true
        // Fast path: no escapes.
        while i < end {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                let slice = bytes[stringStart..<i]
                i += 1
                return ascii ? String(decoding: slice, as: UTF8.self) : try validUTF8(slice)
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw fail("unescaped control character in string") }
            if c >= 0x80 { ascii = false }
            i += 1
        }
        // Slow path: decode escapes into a byte buffer.
        var buffer = [UInt8](bytes[stringStart..<i])
        while true {
            guard i < end else { throw fail("unterminated string") }
            let c = bytes[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("unescaped control character in string") }
            if c != UInt8(ascii: "\\") { buffer.append(c); i += 1; continue }
            i += 1
            guard i < end else { throw fail("unterminated string") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): buffer.append(e)
            case UInt8(ascii: "b"): buffer.append(0x08)
            case UInt8(ascii: "f"): buffer.append(0x0C)
            case UInt8(ascii: "n"): buffer.append(0x0A)
            case UInt8(ascii: "r"): buffer.append(0x0D)
            case UInt8(ascii: "t"): buffer.append(0x09)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if code >= 0xD800 && code <= 0xDBFF {
                    guard end - i >= 2, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw fail("unpaired surrogate \\u\(String(code, radix: 16)) in string")
                    }
                    i += 2
                    let low = try hex4()
                    guard low >= 0xDC00 && low <= 0xDFFF else {
                        throw fail("unpaired surrogate \\u\(String(code, radix: 16)) in string")
                    }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if code >= 0xDC00 && code <= 0xDFFF {
                    throw fail("unpaired surrogate \\u\(String(code, radix: 16)) in string")
                }
                guard let scalar = Unicode.Scalar(code) else { throw fail("invalid \\u escape") }
                buffer.append(contentsOf: Array(String(Character(scalar)).utf8))
            default:
                throw fail("invalid escape '\\\(Character(Unicode.Scalar(e)))' in string")
            }
        }
        return try validUTF8(buffer[...])
    }

    private mutating func hex4() throws -> UInt32 {
        guard end - i >= 4 else { throw fail("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("invalid hex digit in \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    /// Decodes strictly: any repair by the decoder (invalid, overlong, surrogate) is an error.
    private func validUTF8(_ slice: ArraySlice<UInt8>) throws -> String {
        let s = String(decoding: slice, as: UTF8.self)
        guard s.utf8.elementsEqual(slice) else { throw fail("string is not valid UTF-8") }
        return s
    }
}
