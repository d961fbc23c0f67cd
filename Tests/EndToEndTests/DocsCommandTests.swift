// Every command README.md and docs/*.md print in ```sh blocks works as printed on a 2-core
// machine: its subcommand and flags exist, and the cheap ones run.
//
// How a command is read
//   - Only fenced blocks opened with ```sh count. A line ending in `\` joins the next; a `#` that
//     starts a word ends the line (a comment); `&&`, `||`, `|`, `;` and `&` separate commands.
//   - `NAME=value` alone on a line sets a variable for the rest of its block (`B=…`, then `$B`);
//     `$PWD` is the directory the command runs in; other variables stay as written.
//   - Placeholders, among the arguments of goml-dist or a launch script: `…` (options left out),
//     a word in capitals (N, FILE, CKPT, HOST, CONFIG, JOBID) and a word holding `<…>`. Their flags
//     are checked; the command is only parsed.
//   - To find the program, these are passed over: NAME=value, env [-u NAME], nice [-n N],
//     time/usr/bin/time [-v] [-f FMT] [-o FILE], `launch/cluster run [HOST] --`, mpirun and its
//     options, `sh -c SCRIPT NAME`, sbatch and its options.
//
// What is checked for every command
//   - goml-dist (`goml-dist`, `.build/release/goml-dist`, any path ending in /goml-dist; also under
//     mpirun, after `launch/train … --` and after `train.sbatch`): `goml-dist SUB --help-hidden`
//     exits 0 and lists every --flag the command uses;
//   - a launch script: it exists and is executable, each --flag before `--` is in its header
//     comment (what the script prints for --help), and a first word that names a subcommand
//     (`launch/cluster up`) is one the header lists;
//   - mpirun: more than 2 ranks (this machine's and the README's 2 cores) needs --oversubscribe,
//     --hostfile or --host on the line.
//
// What is run, in a fresh directory holding links to the checkout's data, docs, Tests, hostfiles,
// launch and scripts, with .build/release/goml-dist and `goml-dist` on PATH being the binary under
// test, and Harness's environment (mpirun allowed as root, as the README tells users to set):
//   - goml-dist train, sample, plot, plan, verify, gradcheck, bench and exit-codes on this host, also
//     under mpirun, with every word as printed except: train's --steps set to 5 and bench's
//     --steps 2 --warmup 1 (added when absent); `sample --ckpt DIR` and `plot DIR…` get DIR as a
//     copy of a 5-step tiny run when the command does not make it itself;
//   - launch/train on this host, with --bin (so that it does not build) and the train options'
//     --steps set to 5.
//   So an mpirun line asking for more ranks than cores without --oversubscribe fails here.
// What is only parsed, and why
//   - `./launch/train` with no train options: the demo, 2,000 steps (1–2 minutes of both cores);
//   - launch/test (builds and runs the whole suite) and launch/bench (builds, minutes of benchmarks);
//   - launch/cluster, `launch/cluster run …`, mpirun --hostfile/--host, launch/train --hosts,
//     --hostfile or --agent: need the network-namespace cluster (root) or other hosts;
//   - sbatch and launch/slurm: need a Slurm cluster;
//   - commands with placeholders;
//   - models larger than small (--config base, --dim 768 or more): gigabytes and minutes;
//   - `goml-dist plan --sweep-svg`: it redraws docs/scaling.svg (ScalingPlanTests checks the
//     committed figure is what it draws);
//   - several commands on one line (`a && b`);
//   - anything else (swift build, export, ip, python3, grep): not the project's commands.

import Foundation
import XCTest

final class DocsCommandTests: XCTestCase {
    static let root = Harness.packageRoot
    /// The cores of the machine the README is written for.
    static let cores = 2

    struct DocCommand {
        let file: String
        let line: Int
        let text: String
        let variables: [String: String]
        var lines: [String] = []     // as printed, from `line` on
        var location: String { "\(file):\(line)" }
        /// The command on one line, for messages.
        var shown: String { text.replacingOccurrences(of: #"\s+"#, with: " ", options: .regularExpression) }
        /// file:line of the printed line (of a joined command) that holds `word`.
        func location(of word: String) -> String {
            let i = lines.firstIndex { $0.range(of: "(^|\\s)" + NSRegularExpression.escapedPattern(for: word) + "(\\s|=|$)", options: .regularExpression) != nil } ?? 0
            return "\(file):\(line + i)"
        }
        func segments(pwd: String) -> [[String]] {
            DocsCommandTests.shellWords(text, variables: variables.merging(["PWD": pwd]) { $1 })
        }
    }

    // MARK: reading the documents

    static func documents() -> [String] {
        let docs = (try? FileManager.default.contentsOfDirectory(atPath: root + "/docs")) ?? []
        return ["README.md"] + docs.filter { $0.hasSuffix(".md") }.sorted().map { "docs/" + $0 }
    }

    static func commands() throws -> [DocCommand] {
        var result: [DocCommand] = []
        for file in documents() {
            let text = try String(contentsOfFile: root + "/" + file, encoding: .utf8)
            var inBlock = false, variables: [String: String] = [:]
            var pending = "", pendingLine = 0, pendingLines: [String] = []
            for (index, raw) in text.components(separatedBy: "\n").enumerated() {
                let trimmed = raw.trimmingCharacters(in: .whitespaces)
                if !inBlock {
                    if trimmed == "```sh" { inBlock = true; variables = [:]; pending = "" }
                    continue
                }
                if trimmed.hasPrefix("```") { inBlock = false; continue }
                if pending.isEmpty { pendingLine = index + 1; pendingLines = [] }
                let line = raw.replacingOccurrences(of: #"\s+$"#, with: "", options: .regularExpression)
                pendingLines.append(line)
                if line.hasSuffix("\\") { pending += String(line.dropLast()) + " "; continue }
                let joined = pending + line
                pending = ""
                let segments = shellWords(joined, variables: variables)
                if segments.count == 1, segments[0].allSatisfy(isAssignment) {
                    for word in segments[0] {
                        let parts = word.split(separator: "=", maxSplits: 1).map(String.init)
                        variables[parts[0]] = parts.count > 1 ? parts[1] : ""
                    }
                    continue
                }
                if !segments.isEmpty {
                    result.append(DocCommand(file: file, line: pendingLine, text: joined.trimmingCharacters(in: .whitespaces),
                                             variables: variables, lines: pendingLines))
                }
            }
        }
        return result
    }

    static func isAssignment(_ word: String) -> Bool {
        word.range(of: #"^[A-Za-z_][A-Za-z0-9_]*="#, options: .regularExpression) != nil
    }

    /// A shell's words: quotes, backslashes, `$NAME`/`${NAME}` for the given variables (others as
    /// written), a `#` starting a word ends the line, and `&& || | ; &` separate commands.
    static func shellWords(_ text: String, variables: [String: String]) -> [[String]] {
        let c = Array(text)
        var segments: [[String]] = [[]], word = "", inWord = false, i = 0
        func endWord() {
            if inWord { segments[segments.count - 1].append(word) }
            word = ""; inWord = false
        }
        func variable() {   // at c[i] == "$"
            var j = i + 1, name = "", braced = false
            if j < c.count, c[j] == "{" { braced = true; j += 1 }
            while j < c.count, c[j].isLetter || c[j].isNumber || c[j] == "_" { name.append(c[j]); j += 1 }
            if braced, j < c.count, c[j] == "}" { j += 1 }
            if !name.isEmpty, let value = variables[name] { word += value } else { word += String(c[i..<j]) }
            i = max(j, i + 1)
        }
        while i < c.count {
            let ch = c[i]
            switch ch {
            case "'":
                inWord = true; i += 1
                while i < c.count, c[i] != "'" { word.append(c[i]); i += 1 }
                i += 1
            case "\"":
                inWord = true; i += 1
                while i < c.count, c[i] != "\"" {
                    if c[i] == "\\", i + 1 < c.count { word.append(c[i + 1]); i += 2 } else if c[i] == "$" { variable() } else { word.append(c[i]); i += 1 }
                }
                i += 1
            case "\\" where i + 1 < c.count:
                inWord = true; word.append(c[i + 1]); i += 2
            case " ", "\t":
                endWord(); i += 1
            case "#" where !inWord:
                i = c.count
            case "&", "|", ";":
                endWord()
                while i < c.count, "&|;".contains(c[i]) { i += 1 }
                segments.append([])
            case "$":
                inWord = true; variable()
            default:
                inWord = true; word.append(ch); i += 1
            }
        }
        endWord()
        return segments.filter { !$0.isEmpty }
    }

    static func isPlaceholder(_ word: String) -> Bool {
        word.contains("…") || word.range(of: #"^[A-Z][A-Z0-9_]*$"#, options: .regularExpression) != nil
            || word.range(of: #"<[^>]*>"#, options: .regularExpression) != nil
    }

    // MARK: what a command runs

    struct Program {
        let index: Int          // where the program's word is
        let path: String        // as written (`./` dropped for scripts)
        let arguments: [String]
    }

    struct Analysis {
        var goml: Program?              // goml-dist, and its arguments (subcommand first)
        var scripts: [Program] = []     // launch scripts and train.sbatch, outermost first
        var mpirun: [String]?           // mpirun's own options
        var clusterRun = false
        var sbatch = false
        var other: String?              // the program, when it is none of the above
        var problems: [String] = []
        /// The arguments launch/train (after `--`) or train.sbatch pass to `goml-dist train`.
        var trainArguments: [String]? {
            guard let s = scripts.last else { return nil }
            if s.path == "launch/train" { return s.arguments.firstIndex(of: "--").map { Array(s.arguments[($0 + 1)...]) } }
            if s.path.hasSuffix(".sbatch") { return s.arguments }
            return nil
        }
    }

    static let mpirunArity: [String: Int] = ["-np": 1, "-n": 1, "--np": 1, "--hostfile": 1, "-hostfile": 1, "--host": 1, "-H": 1,
                                             "--mca": 2, "-mca": 2, "-x": 1, "--bind-to": 1, "--map-by": 1,
                                             "--oversubscribe": 0, "--report-bindings": 0]

    static func isGomlDist(_ word: String) -> Bool { word == "goml-dist" || word.hasSuffix("/goml-dist") }

    static func analyze(_ w: [String]) -> Analysis {
        var a = Analysis(), i = 0
        scan: while i < w.count {
            let word = w[i], path = word.hasPrefix("./") ? String(word.dropFirst(2)) : word
            if isAssignment(word) { i += 1; continue }
            switch word {
            case "env":
                i += 1
                while i < w.count, w[i].hasPrefix("-") || isAssignment(w[i]) { i += w[i] == "-u" ? 2 : 1 }
            case "nice":
                i += 1
                if i < w.count, w[i] == "-n" { i += 2 } else if i < w.count, w[i].hasPrefix("-") { i += 1 }
            case "time", "/usr/bin/time":
                i += 1
                while i < w.count, w[i].hasPrefix("-") { i += ["-f", "-o"].contains(w[i]) ? 2 : 1 }
            case "sh" where i + 1 < w.count && w[i + 1] == "-c", "bash" where i + 1 < w.count && w[i + 1] == "-c":
                i += 4   // sh -c SCRIPT NAME ARGS: the program is the first of ARGS
            case "mpirun":
                var options: [String] = []
                i += 1
                while i < w.count, w[i].hasPrefix("-") {
                    guard let arity = mpirunArity[w[i]] else {
                        a.problems.append("mpirun option \(w[i]) is not in DocsCommandTests.mpirunArity"); break scan
                    }
                    options += w[i...min(i + arity, w.count - 1)]
                    i += 1 + arity
                }
                a.mpirun = options
            case "sbatch":
                a.sbatch = true
                i += 1
                while i < w.count, w[i].hasPrefix("-") { i += 1 }
                guard i < w.count else { break scan }
                a.scripts.append(Program(index: i, path: w[i].hasPrefix("./") ? String(w[i].dropFirst(2)) : w[i], arguments: Array(w[(i + 1)...])))
                break scan
            default:
                if path.hasPrefix("launch/") {
                    if path == "launch/cluster", i + 1 < w.count, w[i + 1] == "run", let sep = w[i...].firstIndex(of: "--") {
                        a.scripts.append(Program(index: i, path: path, arguments: Array(w[(i + 1)..<sep])))
                        a.clusterRun = true
                        i = sep + 1
                        continue
                    }
                    a.scripts.append(Program(index: i, path: path, arguments: Array(w[(i + 1)...])))
                } else if isGomlDist(word) {
                    a.goml = Program(index: i, path: word, arguments: Array(w[(i + 1)...]))
                } else {
                    a.other = word
                }
                break scan
            }
        }
        return a
    }

    // MARK: what goml-dist and the scripts accept

    static var helpCache: [String: Harness.Result] = [:]

    /// `goml-dist SUB --help-hidden` (hidden options included), run once per subcommand.
    static func help(_ sub: String?) -> Harness.Result {
        let key = sub ?? ""
        if let r = helpCache[key] { return r }
        let r = Harness.goml((sub.map { [$0] } ?? []) + ["--help-hidden"], timeout: 60)
        helpCache[key] = r
        return r
    }

    /// The options of a help text, and those among them that take a value.
    static func options(_ help: String) -> (all: Set<String>, withValue: Set<String>) {
        var all: Set<String> = ["--help", "--help-hidden"], withValue: Set<String> = []
        for line in help.split(separator: "\n") where line.hasPrefix("  -") {
            let column = line.dropFirst(2).components(separatedBy: "  ")[0]
            let names = matches(#"--[A-Za-z0-9][A-Za-z0-9-]*"#, in: column).map { $0[0] }
            all.formUnion(names)
            if column.contains("<") { withValue.formUnion(names) }
        }
        return (all, withValue)
    }

    /// Each match of `pattern` in `text`: the whole match, then its groups.
    static func matches(_ pattern: String, in text: String) -> [[String]] {
        let regex = try! NSRegularExpression(pattern: pattern)
        return regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).map { m in
            (0..<m.numberOfRanges).map { Range(m.range(at: $0), in: text).map { String(text[$0]) } ?? "" }
        }
    }

    /// A script's header comment: the lines after the shebang up to the first that is not a comment.
    static func header(_ script: String) -> String {
        let text = (try? String(contentsOfFile: root + "/" + script, encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: false).dropFirst()
            .prefix { $0.hasPrefix("#") }.joined(separator: "\n")
    }

    /// A problem and the word it is about (to find its printed line).
    typealias Problem = (word: String, message: String)

    /// What is wrong with a goml-dist command's subcommand and flags.
    static func gomlProblems(_ arguments: [String]) -> [Problem] {
        let sub = arguments.first.flatMap { $0.hasPrefix("-") ? nil : $0 }
        let r = help(sub)
        guard r.status == 0 else { return [(sub ?? "", "goml-dist has no subcommand \(sub ?? "?") (`goml-dist \(sub ?? "") --help-hidden` exits \(r.status))")] }
        let known = options(r.stdout).all
        let used = arguments.dropFirst(sub == nil ? 0 : 1).filter { $0.hasPrefix("--") && $0 != "--" }
            .map { String($0.split(separator: "=", maxSplits: 1)[0]) }
        return used.filter { !known.contains($0) }.map { ($0, "goml-dist \(sub ?? "") has no flag \($0) (not in `goml-dist \(sub ?? "") --help-hidden`)") }
    }

    static func scriptProblems(_ script: Program) -> [Problem] {
        guard FileManager.default.isExecutableFile(atPath: root + "/" + script.path) else { return [(script.path, "\(script.path) is not an executable file of the repository")] }
        let head = header(script.path)
        let own = script.path == "launch/train" ? Array(script.arguments.prefix { $0 != "--" })
            : script.path.hasSuffix(".sbatch") ? [] : script.arguments
        var problems: [Problem] = []
        for flag in own where flag.hasPrefix("--") && flag != "--" {
            let name = String(flag.split(separator: "=", maxSplits: 1)[0])
            if head.range(of: "(^|[^A-Za-z0-9-])" + NSRegularExpression.escapedPattern(for: name) + "([^A-Za-z0-9-]|$)", options: .regularExpression) == nil {
                problems.append((name, "\(script.path) has no flag \(name) (not in its header comment, what --help prints)"))
            }
        }
        // Subcommands: the words the header shows right after the script's name (`launch/cluster up`).
        let listed = Set(matches(NSRegularExpression.escapedPattern(for: script.path) + " ([a-z][a-z0-9-]*)", in: head).map { $0[1] })
        if !listed.isEmpty, let first = own.first, first.range(of: #"^[a-z][a-z0-9-]*$"#, options: .regularExpression) != nil, !listed.contains(first) {
            problems.append((first, "\(script.path) has no subcommand \(first) (its header lists \(listed.sorted().joined(separator: ", ")))"))
        }
        return problems
    }

    // MARK: the tests

    /// Every subcommand, flag and script a documented command uses exists.
    func testEveryDocumentedCommandParses() throws {
        let commands = try Self.commands()
        XCTAssertGreaterThan(commands.count, 40, "too few commands found: the extraction is broken")
        var checked = 0
        for command in commands {
            for words in command.segments(pwd: Self.root) {
                let a = Self.analyze(words)
                var problems = a.problems.map { (word: "mpirun", message: $0) }
                if let goml = a.goml { problems += Self.gomlProblems(goml.arguments); checked += 1 }
                for script in a.scripts { problems += Self.scriptProblems(script); checked += 1 }
                if let train = a.trainArguments { problems += Self.gomlProblems(["train"] + train) }
                for p in problems { XCTFail("\(command.location(of: p.word)): \(p.message)\n    \(command.shown)") }
            }
        }
        XCTAssertGreaterThan(checked, 30, "too few goml-dist and launch commands found")
    }

    /// An mpirun line asking for more ranks than the README's 2 cores says how they fit:
    /// --oversubscribe, or a hostfile (whose slots place them).
    func testMpirunLinesFitATwoCoreMachine() throws {
        for command in try Self.commands() {
            for words in command.segments(pwd: Self.root) {
                guard let options = Self.analyze(words).mpirun else { continue }
                let np = options.firstIndex { ["-np", "-n", "--np"].contains($0) }.flatMap { Int(options[$0 + 1]) } ?? Self.cores
                let placed = options.contains { ["--oversubscribe", "--hostfile", "-hostfile", "--host", "-H"].contains($0) }
                XCTAssertTrue(np <= Self.cores || placed,
                              "\(command.location): mpirun -np \(np) on a \(Self.cores)-core machine needs --oversubscribe or a hostfile\n    \(command.shown)")
            }
        }
    }

    /// The README says, near its first mpirun line, what mpirun needs as root.
    func testReadmeNamesWhatMpirunNeedsAsRoot() throws {
        let lines = try String(contentsOfFile: Self.root + "/README.md", encoding: .utf8).components(separatedBy: "\n")
        let first = try XCTUnwrap(try Self.commands().first { $0.file == "README.md" && $0.text.hasPrefix("mpirun") }, "README has no mpirun line")
        let near = lines[max(0, first.line - 8)..<min(lines.count, first.line + 12)].joined(separator: "\n")
        XCTAssertTrue(near.contains("OMPI_ALLOW_RUN_AS_ROOT=1") && near.contains("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"),
                      "README.md:\(first.line): say near the first mpirun line that as root it needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
    }

    /// Why a command is only parsed, or nil when it runs.
    static func reasonNotToRun(_ segments: [[String]], _ a: Analysis) -> String? {
        if segments.count > 1 { return "several commands on one line" }
        if a.clusterRun { return "runs on launch/cluster's hosts (root, network namespaces)" }
        if let o = a.mpirun, o.contains(where: { ["--hostfile", "-hostfile", "--host", "-H"].contains($0) }) { return "runs on the hosts of a hostfile" }
        if a.sbatch { return "needs a Slurm cluster" }
        let arguments = (a.goml?.arguments ?? []) + a.scripts.flatMap(\.arguments)
        if arguments.contains(where: isPlaceholder) { return "has placeholders" }
        if let script = a.scripts.first {
            switch script.path {
            case "launch/train":
                if script.arguments.contains(where: { ["--hosts", "--hostfile", "--agent"].contains($0) }) { return "runs across hosts" }
                if a.trainArguments == nil { return "the demo: 2,000 steps, 1–2 minutes of both cores" }
                return nil
            case "launch/test": return "builds and runs the whole test suite"
            case "launch/bench": return "builds and runs minutes of benchmarks"
            case "launch/cluster": return "makes network namespaces (root)"
            default: return script.path.hasPrefix("launch/slurm/") ? "needs a Slurm cluster" : "no rule runs \(script.path)"
            }
        }
        guard let goml = a.goml else { return "not a goml-dist or launch command" }
        guard let sub = goml.arguments.first, ["train", "sample", "plot", "plan", "verify", "gradcheck", "bench", "exit-codes"].contains(sub) else {
            return "no rule runs goml-dist \(goml.arguments.first ?? "")"
        }
        let w = goml.arguments
        if sub == "plan" && w.contains("--sweep-svg") { return "redraws docs/scaling.svg (ScalingPlanTests checks it)" }
        let config = w.firstIndex(of: "--config").map { w[$0 + 1] }, dim = w.firstIndex(of: "--dim").flatMap { Int(w[$0 + 1]) }
        if config == "base" || (dim ?? 0) >= 768 { return "a model larger than small: gigabytes and minutes" }
        return nil
    }

    /// `flag value` set in `words` (each occurrence), or appended when the flag is absent.
    static func setting(_ words: [String], _ values: [(String, String)]) -> [String] {
        var w = words
        for (flag, value) in values {
            let at = w.indices.filter { w[$0] == flag && $0 + 1 < w.count }
            if at.isEmpty { w += [flag, value] } else { for i in at { w[i + 1] = value } }
        }
        return w
    }

    /// The command as it runs here: steps lowered, launch/train given --bin.
    static func rewritten(_ words: [String], _ a: Analysis) -> [String] {
        if let goml = a.goml, let sub = goml.arguments.first {
            let head = Array(words[...goml.index]) + [sub]
            switch sub {
            case "train": return head + setting(Array(goml.arguments.dropFirst()), [("--steps", "5")])
            case "bench": return head + setting(Array(goml.arguments.dropFirst()), [("--steps", "2"), ("--warmup", "1")])
            default: return words
            }
        }
        if let script = a.scripts.first, script.path == "launch/train", let sep = script.arguments.firstIndex(of: "--") {
            let own = Array(script.arguments[..<sep]), train = Array(script.arguments[(sep + 1)...])
            return Array(words[...script.index]) + ["--bin", Harness.binary] + own + ["--"] + setting(train, [("--steps", "5")])
        }
        return words
    }

    /// A directory to run in: the checkout's inputs linked in, the binary at .build/release and in bin.
    static func sandbox() throws -> String {
        let dir = Harness.temporaryDirectory("docs")
        let fm = FileManager.default
        for name in ["data", "docs", "Tests", "hostfiles", "launch", "scripts"] {
            try fm.createSymbolicLink(atPath: dir + "/" + name, withDestinationPath: root + "/" + name)
        }
        for bin in [dir + "/.build/release", dir + "/bin"] {
            try fm.createDirectory(atPath: bin, withIntermediateDirectories: true)
            try fm.createSymbolicLink(atPath: bin + "/goml-dist", withDestinationPath: Harness.binary)
        }
        return dir
    }

    static var fixtureRun: String?

    override class func tearDown() {
        if let run = fixtureRun { try? FileManager.default.removeItem(atPath: (run as NSString).deletingLastPathComponent) }
        fixtureRun = nil
        super.tearDown()
    }

    /// A 5-step tiny run (checkpoint, metrics.jsonl), made once.
    static func tinyRun() throws -> String {
        if let dir = fixtureRun { return dir }
        let dir = Harness.temporaryDirectory("docs-run") + "/run"
        let r = Harness.goml(["train", "--single", "--config", "tiny", "--steps", "5", "--log-every", "1",
                              "--data", Harness.corpus, "--out", dir], timeout: 120)
        guard r.status == 0 else { throw XCTSkip("cannot make the tiny run the sample and plot commands read:\n\(r.output.suffix(2000))") }
        fixtureRun = dir
        return dir
    }

    /// The run directories a sample or plot command reads, copied in from the tiny run when missing.
    static func provideRuns(_ a: Analysis, in dir: String) throws {
        guard let goml = a.goml, let sub = goml.arguments.first else { return }
        var needed: [String] = []
        let args = Array(goml.arguments.dropFirst())
        if sub == "sample", let i = args.firstIndex(of: "--ckpt"), i + 1 < args.count { needed.append(args[i + 1]) }
        if sub == "plot" {
            let withValue = options(help("plot").stdout).withValue
            var i = 0
            while i < args.count {
                if args[i].hasPrefix("-") { i += withValue.contains(args[i]) ? 2 : 1 } else { needed.append(args[i]); i += 1 }
            }
        }
        for path in needed {
            let target = path.hasPrefix("/") ? path : dir + "/" + path
            guard !FileManager.default.fileExists(atPath: target) else { continue }
            try FileManager.default.createDirectory(atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: try tinyRun(), toPath: target)
        }
    }

    /// The cheap commands run as printed (steps lowered), on this 2-core machine; see the list at the top.
    func testCheapCommandsRunAsPrinted() throws {
        var ran: [String] = [], parsed: [String] = []
        for command in try Self.commands() {
            let printed = command.segments(pwd: Self.root)
            if let reason = Self.reasonNotToRun(printed, Self.analyze(printed[0])) {
                parsed.append("\(command.location) (\(reason))")
                continue
            }
            let dir = try Self.sandbox()
            let segments = command.segments(pwd: dir)
            let a = Self.analyze(segments[0])
            try Self.provideRuns(a, in: dir)
            var words = Self.rewritten(segments[0], a)
            var environment = ["PATH": dir + "/bin:" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")]
            while let first = words.first, Self.isAssignment(first) {
                let parts = first.split(separator: "=", maxSplits: 1).map(String.init)
                environment[parts[0]] = parts.count > 1 ? parts[1] : ""
                words.removeFirst()
            }
            let program = words[0].contains("/") ? (words[0].hasPrefix("/") ? words[0] : dir + "/" + words[0])
                : ((environment["PATH"] ?? "").split(separator: ":").map { "\($0)/\(words[0])" }
                    .first { FileManager.default.isExecutableFile(atPath: $0) } ?? words[0])
            let r = Harness.run(program, Array(words.dropFirst()), timeout: 300, environment: environment, directory: dir)
            ran.append("\(command.location) (\(Int(r.seconds.rounded())) s)")
            XCTAssertFalse(r.timedOut, "\(command.location): timed out after \(Int(r.seconds)) s\n    \(command.shown)\n    ran: \(words.joined(separator: " "))\n\(r.output.suffix(3000))")
            XCTAssertEqual(r.status, 0, "\(command.location): exit \(r.status) on this \(ProcessInfo.processInfo.activeProcessorCount)-core machine\n    \(command.shown)\n    ran: \(words.joined(separator: " "))\n\(r.output.suffix(3000))")
            if r.status == 0 { try? FileManager.default.removeItem(atPath: dir) }
        }
        print("docs commands run: \(ran.count)\n  " + ran.joined(separator: "\n  "))
        print("docs commands only parsed: \(parsed.count)\n  " + parsed.joined(separator: "\n  "))
        XCTAssertGreaterThan(ran.count, 10, "too few documented commands ran")
    }
}
