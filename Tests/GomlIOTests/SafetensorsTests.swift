// SafetensorsTests.swift — round trips, writer layout, and one test per kind of
// malformed file (each must throw a SafetensorsError naming the problem, never crash),
// plus a read of the PyTorch-made fixture when it is present.

import Foundation
import XCTest
import GomlIO

final class SafetensorsTests: XCTestCase {

    // MARK: helpers

    /// 8-byte little-endian length + header text (+ optional override of the length) + data.
    private func rawFile(_ header: String, data: [UInt8] = [], length: UInt64? = nil) -> [UInt8] {
        let h = Array(header.utf8)
        let n = length ?? UInt64(h.count)
        var out: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: n >> UInt64(8 * $0)) }
        out += h
        out += data
        return out
    }

    private func assertRejects(_ bytes: [UInt8], _ keyword: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try SafetensorsFile(bytes: bytes)
            XCTFail("expected an error mentioning \"\(keyword)\", but the file was accepted", file: file, line: line)
        } catch let e as SafetensorsError {
            XCTAssertTrue(e.message.contains(keyword), "message \"\(e.message)\" lacks \"\(keyword)\"",
                          file: file, line: line)
            XCTAssertFalse(e.message.contains("\n"), "message is not one line: \(e.message)", file: file, line: line)
        } catch {
            XCTFail("unexpected error type \(error)", file: file, line: line)
        }
    }

    private func assertThrows(_ keyword: String, file: StaticString = #filePath, line: UInt = #line,
                              _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("expected an error mentioning \"\(keyword)\"", file: file, line: line)
        } catch let e as SafetensorsError {
            XCTAssertTrue(e.message.contains(keyword), "message \"\(e.message)\" lacks \"\(keyword)\"",
                          file: file, line: line)
        } catch {
            XCTFail("unexpected error type \(error)", file: file, line: line)
        }
    }

    private func headerLength(_ bytes: [UInt8]) -> Int {
        var n = 0
        for k in 0..<8 { n |= Int(bytes[k]) << (8 * k) }
        return n
    }

    private static let trickyMetadata: [String: String] = [
        "quote\"key": "say \"hi\"",
        "backslash": #"C:\path\to\"file\" \\ end\"#,
        "controls": "nl\n cr\r tab\t bs\u{08} ff\u{0C} nul\u{00} one\u{01} us\u{1F} del\u{7F}",
        "unicode": "é ñ 日本語 😀 \u{2028}\u{2029} e\u{301}",
        "json": #"{"vocab": 256, "list": ["a", "b"]}"#,
        "": "empty key",
        "empty value": "",
        "slash/": "</script>",
    ]

    // MARK: round trips

    func testRoundTrip() throws {
        let weights: [Float] = [1.5, -2.25, 0, .pi, -0.0, 1e-30, .greatestFiniteMagnitude, -.infinity, .nan, 7]
        let tokens: [Int32] = [0, 1, -1, .max, .min, 255]
        var writer = SafetensorsWriter(metadata: Self.trickyMetadata)
        try writer.addFloats("layers.0.w", shape: [2, 5], weights)
        try writer.addInt32s("tokens", shape: [2, 3], tokens)
        try writer.addFloats("scalar", shape: [], [42.5])
        try writer.addFloats("empty", shape: [0, 7], [])
        try writer.add("half", dtype: .F16, shape: [3], bytes: [0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B])
        try writer.add("mask", dtype: .BOOL, shape: [2, 1], bytes: [1, 0])
        try writer.add("wide", dtype: .F64, shape: [1], bytes: [0, 0, 0, 0, 0, 0, 0xF0, 0x3F])
        try writer.add("名前 \"quoted\"\n", dtype: .U8, shape: [2], bytes: [9, 8])
        try weights.withUnsafeBufferPointer { try writer.addFloats("from.pointer", shape: [10], $0) }

        let bytes = writer.serialized()
        let file = try SafetensorsFile(bytes: bytes)

        XCTAssertEqual(file.metadata, Self.trickyMetadata)
        XCTAssertEqual(file.tensors.count, 9)

        let w = try file.floats("layers.0.w")
        XCTAssertEqual(w.count, weights.count)
        for (a, b) in zip(w, weights) { XCTAssertEqual(a.bitPattern, b.bitPattern) }
        XCTAssertEqual(try file.tensor("layers.0.w").shape, [2, 5])
        XCTAssertEqual(try file.tensor("layers.0.w").dtype, .F32)
        XCTAssertEqual(try file.floats("from.pointer").map(\.bitPattern), weights.map(\.bitPattern))

        XCTAssertEqual(try file.int32s("tokens"), tokens)
        XCTAssertEqual(try file.tensor("tokens").shape, [2, 3])
        XCTAssertEqual(try file.tensor("tokens").dtype, .I32)

        let scalar = try file.tensor("scalar")
        XCTAssertEqual(scalar.shape, [])
        XCTAssertEqual(scalar.elementCount, 1)
        XCTAssertEqual(scalar.byteRange.count, 4)
        XCTAssertEqual(try file.floats("scalar"), [42.5])

        let empty = try file.tensor("empty")
        XCTAssertEqual(empty.shape, [0, 7])
        XCTAssertEqual(empty.elementCount, 0)
        XCTAssertEqual(empty.byteRange.count, 0)
        XCTAssertEqual(try file.floats("empty"), [])
        try file.copyFloats("empty", into: UnsafeMutableBufferPointer(start: nil, count: 0))

        XCTAssertEqual(Array(try file.rawBytes("half")), [0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B])
        XCTAssertEqual(try file.tensor("half").dtype, .F16)
        XCTAssertEqual(Array(try file.rawBytes("mask")), [1, 0])
        XCTAssertEqual(try file.tensor("wide").dtype, .F64)
        XCTAssertEqual(Array(try file.rawBytes("名前 \"quoted\"\n")), [9, 8])

        var destination = [Float](repeating: 0, count: 10)
        try destination.withUnsafeMutableBufferPointer { try file.copyFloats("layers.0.w", into: $0) }
        XCTAssertEqual(destination.map(\.bitPattern), weights.map(\.bitPattern))

        // The header is real JSON: an independent parser agrees on the metadata.
        let n = headerLength(bytes)
        let json = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as? [String: Any])
        XCTAssertEqual(json["__metadata__"] as? [String: String], Self.trickyMetadata)
        XCTAssertNotNil(json["名前 \"quoted\"\n"])

        // Writing the read file back gives the same bytes.
        var again = SafetensorsWriter(metadata: file.metadata)
        for name in file.names {
            let t = try file.tensor(name)
            try again.add(name, dtype: t.dtype, shape: t.shape, bytes: Array(try file.rawBytes(name)))
        }
        XCTAssertEqual(again.serialized(), bytes)
    }

    func testHeaderPaddedToEightAndNamesSorted() throws {
        for extra in 0..<9 {
            var writer = SafetensorsWriter(metadata: ["k": String(repeating: "x", count: extra)])
            for name in ["zeta", "alpha", "Beta", "mid.1", "mid.0", "a"] {
                try writer.addFloats(name, shape: [extra + 1], [Float](repeating: Float(extra), count: extra + 1))
            }
            let bytes = writer.serialized()
            let n = headerLength(bytes)
            XCTAssertEqual(n % 8, 0, "header length \(n)")
            XCTAssertEqual((8 + n) % 8, 0, "data area starts 8-aligned")
            let header = Array(bytes[8..<(8 + n)])
            let lastBrace = try XCTUnwrap(header.lastIndex(of: UInt8(ascii: "}")))
            XCTAssertTrue(header[(lastBrace + 1)...].allSatisfy { $0 == UInt8(ascii: " ") }, "padding is spaces")
            XCTAssertLessThan(header.count - lastBrace - 1, 8)

            let file = try SafetensorsFile(bytes: bytes)
            XCTAssertEqual(file.names, ["Beta", "a", "alpha", "mid.0", "mid.1", "zeta"])
            XCTAssertEqual(file.names, file.names.sorted())
            // Contiguous offsets in name order.
            var expected = 0
            for name in file.names {
                let r = try file.tensor(name).byteRange
                XCTAssertEqual(r.lowerBound, expected)
                expected = r.upperBound
            }
            XCTAssertEqual(8 + n + expected, bytes.count)
        }
    }

    func testEmptyWriterAndMetadataOnly() throws {
        let empty = SafetensorsWriter().serialized()
        XCTAssertEqual(empty.count, 16)
        let file = try SafetensorsFile(bytes: empty)
        XCTAssertTrue(file.tensors.isEmpty)
        XCTAssertTrue(file.metadata.isEmpty)
        XCTAssertEqual(file.names, [])

        let metaOnly = try SafetensorsFile(bytes: SafetensorsWriter(metadata: ["a": "b"]).serialized())
        XCTAssertEqual(metaOnly.metadata, ["a": "b"])
        XCTAssertTrue(metaOnly.tensors.isEmpty)
    }

    func testReadsHandWrittenHeader() throws {
        // Whitespace, escapes (\u00e9, a surrogate pair, \/), extra fields, null metadata values elsewhere.
        let header = """
         { "b\\u00e9" : { "dtype" : "I32", "shape" : [ 1 ], "data_offsets" : [ 4 , 8 ], "extra": {"x": [true, null]} },
          "\\ud83d\\ude00\\/" : {"data_offsets":[0,4],"shape":[],"dtype":"F32"},
          "z0": {"dtype":"U16","shape":[0],"data_offsets":[8,8]},
          "z1": {"dtype":"F8_E4M3","shape":[0, 3],"data_offsets":[8,8]},
          "__metadata__": {"format": "pt", "tab": "a\\tb"} }\("    ")
        """
        let data: [UInt8] = [0, 0, 0x80, 0x3F, 7, 0, 0, 0]
        let file = try SafetensorsFile(bytes: rawFile(header, data: data))
        XCTAssertEqual(file.metadata, ["format": "pt", "tab": "a\tb"])
        XCTAssertEqual(try file.int32s("bé"), [7])
        XCTAssertEqual(try file.floats("😀/"), [1])
        XCTAssertEqual(file.names, ["😀/", "bé", "z0", "z1"])
        XCTAssertEqual(try file.tensor("z1").dtype, .F8_E4M3)

        // Null metadata is accepted as empty.
        let nullMeta = try SafetensorsFile(bytes: rawFile(#"{"__metadata__":null}"#))
        XCTAssertEqual(nullMeta.metadata, [:])
    }

    func testDTypeSizes() {
        let sizes: [SafetensorsDType: Int] = [
            .F64: 8, .I64: 8, .U64: 8, .F32: 4, .I32: 4, .U32: 4, .F16: 2, .BF16: 2, .I16: 2, .U16: 2,
            .I8: 1, .U8: 1, .BOOL: 1, .F8_E4M3: 1, .F8_E5M2: 1,
        ]
        XCTAssertEqual(sizes.count, SafetensorsDType.allCases.count)
        for (dtype, size) in sizes { XCTAssertEqual(dtype.byteSize, size, dtype.rawValue) }
        XCTAssertEqual(SafetensorsDType(rawValue: "F8_E5M2"), .F8_E5M2)
    }

    // MARK: accessor and writer errors

    func testAccessorErrors() throws {
        var writer = SafetensorsWriter()
        try writer.addFloats("w", shape: [2, 2], [1, 2, 3, 4])
        try writer.addInt32s("t", shape: [3], [1, 2, 3])
        let file = try SafetensorsFile(bytes: writer.serialized())

        assertThrows("no tensor named \"missing\"") { _ = try file.tensor("missing") }
        assertThrows("no tensor named") { _ = try file.floats("missing") }
        assertThrows("no tensor named") { _ = try file.rawBytes("missing") }
        assertThrows("dtype I32") { _ = try file.floats("t") }
        assertThrows("dtype F32") { _ = try file.int32s("w") }
        var small = [Float](repeating: 0, count: 3)
        assertThrows("destination holds 3") {
            try small.withUnsafeMutableBufferPointer { try file.copyFloats("w", into: $0) }
        }
        var ints = [Float](repeating: 0, count: 3)
        assertThrows("dtype I32") {
            try ints.withUnsafeMutableBufferPointer { try file.copyFloats("t", into: $0) }
        }
    }

    func testWriterErrors() throws {
        var writer = SafetensorsWriter()
        try writer.addFloats("a", shape: [2], [1, 2])
        assertThrows("duplicate tensor name") { try writer.addFloats("a", shape: [1], [1]) }
        assertThrows("size mismatch") { try writer.addFloats("b", shape: [3], [1, 2]) }
        assertThrows("size mismatch") { try writer.addInt32s("c", shape: [2, 2], [1, 2, 3]) }
        assertThrows("size mismatch") { try writer.add("d", dtype: .F16, shape: [2], bytes: [0, 0, 0]) }
        assertThrows("negative") { try writer.add("e", dtype: .U8, shape: [-1], bytes: []) }
        assertThrows("overflows") { try writer.add("f", dtype: .U8, shape: [Int.max, 2], bytes: []) }
        assertThrows("overflows") { try writer.add("g", dtype: .F64, shape: [Int.max / 4], bytes: []) }
        assertThrows("reserved") { try writer.add("__metadata__", dtype: .U8, shape: [0], bytes: []) }
        // Failed adds leave the writer unchanged.
        let file = try SafetensorsFile(bytes: writer.serialized())
        XCTAssertEqual(file.names, ["a"])
    }

    func testPathErrorsArePrefixed() throws {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("safetensors-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }

        let missing = dir.appendingPathComponent("model.safetensors").path
        assertThrows("\(missing): cannot open file") { _ = try SafetensorsFile(path: missing) }

        let bad = dir.appendingPathComponent("bad.safetensors").path
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: bad))
        assertThrows("\(bad): file is 3 bytes, shorter than") { _ = try SafetensorsFile(path: bad) }

        assertThrows("\(dir.path): cannot read file") { _ = try SafetensorsFile(path: dir.path) }

        var writer = SafetensorsWriter(metadata: ["step": "3"])
        try writer.addFloats("x", shape: [3], [1, 2, 3])
        let good = dir.appendingPathComponent("good.safetensors").path
        try writer.write(toPath: good)
        let file = try SafetensorsFile(path: good)
        XCTAssertEqual(try file.floats("x"), [1, 2, 3])
        XCTAssertEqual(file.metadata, ["step": "3"])
    }

    // MARK: malformed files

    private let f32x2 = #""dtype":"F32","shape":[2]"#

    func testRejectsShortFile() {
        assertRejects([], "shorter than the 8-byte")
        assertRejects([1, 2, 3, 4, 5, 6, 7], "shorter than the 8-byte")
    }

    func testRejectsTruncatedDataArea() throws {
        var writer = SafetensorsWriter()
        try writer.addFloats("a", shape: [4], [1, 2, 3, 4])
        let bytes = writer.serialized()
        assertRejects(Array(bytes.dropLast(4)), "beyond the data area")
        assertRejects(Array(bytes.dropLast(16)), "beyond the data area of 0 bytes")
    }

    func testRejectsHeaderLongerThanFile() {
        var bytes = rawFile("{}", length: 4096)
        bytes += [UInt8](repeating: 0x20, count: 90)
        XCTAssertEqual(bytes.count, 100)
        assertRejects(bytes, "header length 4096 exceeds file size 100")
        assertRejects(rawFile("{}  ", length: 5), "exceeds file size")  // one byte short
    }

    func testRejectsHeaderOver100MB() {
        assertRejects(rawFile("{}", length: 1 << 63), "100 MB")
        assertRejects(rawFile("{}", length: UInt64.max), "100 MB")
        assertRejects(rawFile("{}", length: 100_000_001), "100 MB")
    }

    func testRejectsNonJSONHeader() {
        assertRejects(rawFile("not json"), "not valid JSON")
        assertRejects(rawFile(""), "not valid JSON")
        assertRejects(rawFile("        "), "not valid JSON")
        assertRejects(rawFile("{\"a\":"), "not valid JSON")
        assertRejects(rawFile("{\"a\" 1}"), "not valid JSON")
        assertRejects(rawFile("{} x"), "not valid JSON")
        assertRejects(rawFile("{}{}"), "not valid JSON")
        assertRejects(rawFile("{,}"), "not valid JSON")
        assertRejects(rawFile("{'a':1}"), "not valid JSON")
        assertRejects(rawFile("{\"a\":[1,]}"), "not valid JSON")
        assertRejects(rawFile("{\"a\":01}"), "leading zero")
        assertRejects(rawFile("{\"a\":tru}"), "not valid JSON")
        assertRejects(rawFile("{\"a\":\"unterminated}"), "unterminated string")
        assertRejects(rawFile("{\"a\":\"bad \\x escape\"}"), "invalid escape")
        assertRejects(rawFile("{\"a\":\"raw\ttab\"}"), "control character")
        assertRejects(rawFile("{\"a\":\"\\ud800\"}"), "unpaired surrogate")
        assertRejects(rawFile("{\"a\":\"\\udc00\"}"), "unpaired surrogate")
        assertRejects(rawFile("{}\0\0\0\0"), "not valid JSON")
        // Invalid UTF-8 inside a string and outside one.
        var bytes = rawFile("{\"__metadata__\":{\"k\":\"ab\"}}")
        bytes[8 + 22] = 0xFF
        assertRejects(bytes, "not valid UTF-8")
        var overlong = rawFile("{\"__metadata__\":{\"k\":\"ab\"}}")
        overlong[8 + 22] = 0xC0
        overlong[8 + 23] = 0xAF
        assertRejects(overlong, "not valid UTF-8")
        assertRejects([2, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFE], "not valid JSON")
        // Deep nesting is refused, not a stack overflow.
        let deep = "{\"a\":" + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        assertRejects(rawFile(deep), "nesting")
        // Duplicate keys are ambiguous.
        assertRejects(rawFile("{\"a\":{\(f32x2),\"data_offsets\":[0,8]},\"a\":{\(f32x2),\"data_offsets\":[0,8]}}",
                              data: [UInt8](repeating: 0, count: 8)), "duplicate key")
    }

    func testRejectsNonObjectHeader() {
        assertRejects(rawFile("[1, 2]"), "not a JSON object (found array)")
        assertRejects(rawFile("\"text\""), "not a JSON object (found string)")
        assertRejects(rawFile("12"), "not a JSON object (found number)")
        assertRejects(rawFile("null"), "not a JSON object (found null)")
    }

    func testRejectsUnknownDType() {
        assertRejects(rawFile(#"{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#, data: [0]),
                      "unknown dtype \"F4\"")
        assertRejects(rawFile(#"{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
                      "unknown dtype")
    }

    func testRejectsShapeSizeMismatch() {
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#,
                              data: [UInt8](repeating: 0, count: 12)), "size mismatch")
        assertRejects(rawFile(#"{"a":{"dtype":"I64","shape":[],"data_offsets":[0,4]}}"#,
                              data: [UInt8](repeating: 0, count: 4)), "size mismatch")
    }

    func testRejectsOverlappingOffsets() {
        assertRejects(rawFile("{\"a\":{\(f32x2),\"data_offsets\":[0,8]},\"b\":{\(f32x2),\"data_offsets\":[4,12]}}",
                              data: [UInt8](repeating: 0, count: 12)), "overlap")
        // The same range used twice.
        assertRejects(rawFile("{\"a\":{\(f32x2),\"data_offsets\":[0,8]},\"b\":{\(f32x2),\"data_offsets\":[0,8]}}",
                              data: [UInt8](repeating: 0, count: 8)), "overlap")
        // A zero-size tensor inside another one.
        assertRejects(rawFile("{\"a\":{\(f32x2),\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                              data: [UInt8](repeating: 0, count: 8)), "overlap")
    }

    func testRejectsOffsetsBeyondData() {
        assertRejects(rawFile("{\"a\":{\(f32x2),\"data_offsets\":[0,8]}}", data: [0, 0, 0, 0]),
                      "beyond the data area of 4 bytes")
        assertRejects(rawFile("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[9,9]}}", data: [0, 0, 0, 0]),
                      "beyond the data area")
    }

    func testRejectsHole() {
        assertRejects(rawFile("{\"a\":{\(f32x2),\"data_offsets\":[0,8]},\"b\":{\(f32x2),\"data_offsets\":[12,20]}}",
                              data: [UInt8](repeating: 0, count: 20)), "hole")
        assertRejects(rawFile("{\"a\":{\(f32x2),\"data_offsets\":[4,12]}}",
                              data: [UInt8](repeating: 0, count: 12)), "hole")
    }

    func testRejectsDataAreaOfAnotherLength() {
        assertRejects(rawFile("{\"a\":{\(f32x2),\"data_offsets\":[0,8]}}", data: [UInt8](repeating: 0, count: 9)),
                      "data area is 9 bytes but the tensors cover 8")
        assertRejects(rawFile("{}", data: [1]), "data area is 1 bytes but the tensors cover 0")
    }

    func testRejectsNegativeShape() {
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#), "shape[0] is negative")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,0]}}"#), "shape[1] is negative")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}"#), "begin is negative")
    }

    func testRejectsBadNumbers() {
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,6]}}"#), "not an integer")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}"#), "not an integer")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}}"#), "not an integer")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[99999999999999999999999],"data_offsets":[0,4]}}"#),
                      "too large")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}}"#),
                      "too large")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}"#), "not a number")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}"#), "not a number")
    }

    func testRejectsMalformedEntries() {
        assertRejects(rawFile(#"{"a":[1,2]}"#), "entry is not an object (found array)")
        assertRejects(rawFile(#"{"a":"F32"}"#), "entry is not an object (found string)")
        assertRejects(rawFile(#"{"a":{"shape":[1],"data_offsets":[0,4]}}"#), "missing field \"dtype\"")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","data_offsets":[0,4]}}"#), "missing field \"shape\"")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1]}}"#), "missing field \"data_offsets\"")
        assertRejects(rawFile(#"{"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}"#), "\"dtype\" is not a string")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}"#), "\"shape\" is not a list")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":{}}}"#), "\"data_offsets\" is not a list")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#), "must have 2 entries")
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4]}}"#), "must have 2 entries")
    }

    func testRejectsNonStringMetadata() {
        assertRejects(rawFile(#"{"__metadata__":{"a":"ok","b":1}}"#), "__metadata__ value for key \"b\" is not a string")
        assertRejects(rawFile(#"{"__metadata__":{"a":null}}"#), "not a string (found null)")
        assertRejects(rawFile(#"{"__metadata__":{"a":["x"]}}"#), "not a string (found array)")
        assertRejects(rawFile(#"{"__metadata__":["a","b"]}"#), "__metadata__ is not an object")
        assertRejects(rawFile(#"{"__metadata__":"a"}"#), "__metadata__ is not an object")
    }

    func testRejectsBeginAfterEnd() {
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
                              data: [UInt8](repeating: 0, count: 8)), "begin 8 > end 4")
    }

    func testRejectsShapeProductOverflow() {
        // 2^62 * 4 elements overflows Int.
        assertRejects(rawFile(#"{"a":{"dtype":"U8","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#),
                      "element count of shape [4611686018427387904, 4] overflows")
        // The element count fits but the byte size does not.
        assertRejects(rawFile(#"{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}"#),
                      "byte size of F32 shape [4611686018427387904] overflows")
        // A zero dimension makes the product 0, whatever the others are.
        XCTAssertNoThrow(try SafetensorsFile(bytes: rawFile(
            #"{"a":{"dtype":"F32","shape":[4611686018427387904,0,4611686018427387904],"data_offsets":[0,0]}}"#)))
    }

    /// Random corruptions and every truncation of a valid file must throw or succeed, never crash.
    func testCorruptedFilesNeverCrash() throws {
        var writer = SafetensorsWriter(metadata: ["config": #"{"dim": 32}"#, "note": "é\n"])
        try writer.addFloats("a.weight", shape: [3, 2], [1, 2, 3, 4, 5, 6])
        try writer.addInt32s("tokens", shape: [2], [7, 8])
        try writer.addFloats("s", shape: [], [1])
        try writer.addFloats("z", shape: [0], [])
        let good = writer.serialized()
        XCTAssertNoThrow(try SafetensorsFile(bytes: good))

        for length in 0..<good.count {
            XCTAssertThrowsError(try SafetensorsFile(bytes: Array(good[0..<length])))
        }

        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {  // SplitMix64
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let interesting: [UInt8] = Array("{}[]\",:-0123456789.eE \\u".utf8) + [0, 0x7F, 0x80, 0xFF]
        var accepted = 0
        for _ in 0..<3000 {
            var bytes = good
            for _ in 0..<(1 + Int(next() % 3)) {
                let position = Int(next() % UInt64(bytes.count))
                let byte = next() % 2 == 0 ? interesting[Int(next() % UInt64(interesting.count))] : UInt8(truncatingIfNeeded: next())
                bytes[position] = byte
            }
            do {
                let file = try SafetensorsFile(bytes: bytes)
                accepted += 1
                for name in file.names { _ = try file.rawBytes(name) }
            } catch let e as SafetensorsError {
                XCTAssertFalse(e.message.isEmpty)
            }
        }
        XCTAssertGreaterThan(accepted, 0, "some corruptions only touch data bytes")
    }

    // MARK: fixture

    func testReadsPyTorchFixture() throws {
        let packageRoot = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent()  // GomlIOTests
            .deletingLastPathComponent()  // Tests
            .deletingLastPathComponent()  // package root
        // A missing fixture must fail, not skip: it is part of the repository.
        let path = packageRoot.appendingPathComponent("Tests/Fixtures/tiny_step.safetensors").path
        let file = try SafetensorsFile(path: path)

        let tokens = try file.tensor("tokens")
        XCTAssertEqual(tokens.dtype, .I32)
        XCTAssertEqual(tokens.shape, [2, 16])
        let loss = try file.tensor("loss")
        XCTAssertEqual(loss.dtype, .F32)
        XCTAssertEqual(loss.shape, [1])

        let lossValue = try XCTUnwrap(try file.floats("loss").first)
        XCTAssertTrue(lossValue.isFinite && lossValue > 0, "loss \(lossValue)")
        let ids = try file.int32s("tokens")
        XCTAssertEqual(ids.count, 32)
        XCTAssertTrue(ids.allSatisfy { (0..<256).contains($0) })
        // targets[b,t] = tokens[b,t+1] for t < T-1 (fixtures README).
        let targets = try file.int32s("targets")
        for b in 0..<2 {
            for t in 0..<15 { XCTAssertEqual(targets[b * 16 + t], ids[b * 16 + t + 1]) }
        }
        XCTAssertNotNil(file.metadata["config"])
        XCTAssertEqual(file.names.count, file.tensors.count)
    }
}
