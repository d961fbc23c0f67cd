// The repository stands alone: a user's clone has only what is committed, so nothing may
// point outside the checkout, and everything the README links to must be inside it.

import Foundation
import XCTest

final class RepositoryTests: XCTestCase {
    /// Files git tracks, read from the work tree.
    private func trackedFiles() throws -> [String] {
        let r = Harness.run("/usr/bin/git", ["-C", Harness.packageRoot, "ls-files", "-z"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        return r.stdout.split(separator: "\0").map(String.init)
    }

    func testNothingPointsOutsideTheCheckout() throws {
        let outside = ".." + "/shared"   // spelt in two parts so this file does not match itself
        var offenders: [String] = []
        for path in try trackedFiles() {
            guard let data = FileManager.default.contents(atPath: Harness.packageRoot + "/" + path) else {
                XCTFail("tracked file \(path) is missing from the work tree"); continue
            }
            if let text = String(data: data, encoding: .utf8), text.contains(outside) { offenders.append(path) }
        }
        XCTAssertEqual(offenders, [], "these files refer to \(outside), which a user's clone does not have")
    }

    func testEveryReadmeLinkResolvesInsideTheRepository() throws {
        let files = Set(try trackedFiles())
        for readme in files where readme.hasSuffix("README.md") || readme.hasPrefix("docs/") && readme.hasSuffix(".md") {
            let text = try String(contentsOfFile: Harness.packageRoot + "/" + readme, encoding: .utf8)
            let base = URL(fileURLWithPath: "/" + readme).deletingLastPathComponent()
            let links = try NSRegularExpression(pattern: #"\]\(([^)#\s]+)(#[^)]*)?\)"#)
            for match in links.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                let target = String(text[Range(match.range(at: 1), in: text)!])
                if target.contains("://") || target.hasPrefix("mailto:") { continue }
                let resolved = String(base.appendingPathComponent(target).standardized.path.dropFirst())
                let isDirectory = files.contains { $0.hasPrefix(resolved + "/") }
                XCTAssertTrue(files.contains(resolved) || isDirectory, "\(readme) links to \(target), which is not in the repository")
            }
        }
    }

    /// README's table of exit statuses is the code's (`goml-dist exit-codes`, which launch/train
    /// reads), row for row: code, meaning, and whether launch/train relaunches.
    func testReadmeListsTheExitStatusesOfTheCode() throws {
        let r = Harness.goml(["exit-codes"], timeout: 60)
        Harness.assertSuccess(r, "exit-codes")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let noRelaunch = try XCTUnwrap(lines.first { $0.hasPrefix("EXIT_NO_RELAUNCH=") }, r.stdout)
            .split(separator: "\"")[1].split(separator: " ").map(String.init)
        let expected = lines.filter { !$0.hasPrefix("EXIT_NO_RELAUNCH=") }.map { line -> String in
            let parts = line.split(separator: "#", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            let code = String(parts[0].split(separator: "=")[1])
            return "| \(code) | \(parts[1]) | \(noRelaunch.contains(code) ? "no" : "yes") |"
        }
        let readme = try String(contentsOfFile: Harness.packageRoot + "/README.md", encoding: .utf8)
        let rows = readme.split(separator: "\n").map(String.init).filter { $0.range(of: #"^\| [0-9]+ \| "#, options: .regularExpression) != nil }
        XCTAssertEqual(rows, expected)
        // The codes the README and docs name in their prose.
        for (name, code) in [("EXIT_SETUP", 2), ("EXIT_DATA_SHRANK", 8), ("EXIT_STOPPED", 10), ("EXIT_HOST_LOST", 205)] {
            XCTAssertTrue(lines.contains { $0.hasPrefix("\(name)=\(code) ") }, "\(name)=\(code) expected in:\n\(r.stdout)")
        }
    }

    func testTheCorpusAndFixturesAreCommitted() throws {
        let files = Set(try trackedFiles())
        for needed in ["data/tinyshakespeare.txt", "data/README.md", "docs/model.md",
                       "Tests/Fixtures/tiny_step.safetensors", "Tests/Fixtures/tiny_clip.safetensors", "Tests/Fixtures/tiny_noclip.safetensors",
                       "Tests/Fixtures/tiny_long.safetensors"] {
            XCTAssertTrue(files.contains(needed), "\(needed) must be committed: tests, demo and docs read it")
        }
    }
}
