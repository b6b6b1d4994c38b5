(* hello, JavaScript build: the unix build's behaviour (src/unix.c) for node,
   compiled from OCaml by js_of_ocaml. Process arguments are the boot
   arguments, $MIRARI_BLOCK_0 names the tar image, $MIRARI_CONTROL the control
   socket, and SIGTERM is the power button. Node is event-driven, so the
   heartbeat is a timer, and stop requests and HTTP are callbacks, not a poll
   loop. *)

open Js_of_ocaml

let say fmt = Printf.ksprintf (fun line -> print_string ("hello: " ^ line ^ "\n"); flush stdout) fmt

(* The knobs (src/kernel/knobs.h): unknown and malformed words are ignored,
   and a malformed value leaves the knob as it was. *)
type knobs = {
  ignore_stop : bool;
  flood : bool;
  exit_after : int;
  stop_serving_after : int;
  ipv4 : (int list * int) option;  (** --ipv4: the address's four parts and the prefix length *)
  http_port : int;
  version : string;  (** "" for none *)
}

let no_knobs =
  { ignore_stop = false; flood = false; exit_after = 0; stop_serving_after = 0;
    ipv4 = None; http_port = 80; version = "" }

let is_digit c = c >= '0' && c <= '9'

let digits_prefix s =
  let rec go i n =
    if i < String.length s && is_digit s.[i] then go (i + 1) ((n * 10) + Char.code s.[i] - 48) else n
  in
  go 0 0

(* The whole of s: a decimal number of 1 to 5 digits, at most max. *)
let uint ~max s =
  let n = String.length s in
  if n = 0 || n > 5 || not (String.for_all is_digit s) then None
  else
    let v = int_of_string s in
    if v > max then None else Some v

let ipv4_address s =
  let parts = List.map (uint ~max:255) (String.split_on_char '.' s) in
  if List.length parts = 4 && List.for_all Option.is_some parts then Some (List.map Option.get parts) else None

let ipv4_prefix s =
  match String.split_on_char '/' s with
  | [ address; prefix ] -> (
      match (ipv4_address address, uint ~max:32 prefix) with Some a, Some p -> Some (a, p) | _ -> None)
  | _ -> None

let printable s =
  String.length s >= 1 && String.length s <= 31 && String.for_all (fun c -> c >= ' ' && c <= '~') s

let parse_word knobs word =
  let after prefix =
    let n = String.length prefix in
    if String.length word >= n && String.sub word 0 n = prefix then Some (String.sub word n (String.length word - n))
    else None
  in
  let set value update = match value with Some v -> update v | None -> knobs in
  match word with
  | "ignore-stop" -> { knobs with ignore_stop = true }
  | "flood" -> { knobs with flood = true }
  | _ -> (
      match List.find_map (fun (prefix, f) -> Option.map f (after prefix)) [
          ("exit-after=", fun v -> if v = "" then knobs else { knobs with exit_after = digits_prefix v });
          ("stop-serving-after=",
           fun v -> set (uint ~max:99999 v) (fun n -> { knobs with stop_serving_after = n }));
          ("--ipv4=", fun v -> set (ipv4_prefix v) (fun a -> { knobs with ipv4 = Some a }));
          ("--http-port=",
           fun v -> set (uint ~max:65535 v) (fun n -> if n = 0 then knobs else { knobs with http_port = n }));
          ("version=", fun v -> if printable v then { knobs with version = v } else knobs);
        ]
      with
      | Some knobs -> knobs
      | None -> knobs)

(* The tar walk of src/ustar.h, over a string holding the whole image. *)
let block = 512
let path_max = 256

let tar_num image off len =
  let byte i = Char.code image.[off + i] in
  if byte 0 land 0x80 <> 0 then begin
    let v = ref (byte 0 land 0x7f) in
    for i = 1 to len - 1 do v := (!v lsl 8) lor byte i done;
    !v
  end
  else begin
    let i = ref 0 and v = ref 0 in
    while !i < len && image.[off + !i] = ' ' do incr i done;
    while !i < len && image.[off + !i] >= '0' && image.[off + !i] <= '7' do
      v := (!v lsl 3) lor (byte !i - 48);
      incr i
    done;
    !v
  end

let header_ok image off =
  let sum = ref 0 and zero = ref true in
  for i = 0 to block - 1 do
    let c = Char.code image.[off + i] in
    sum := !sum + if i >= 148 && i < 156 then 32 else c;
    if c <> 0 then zero := false
  done;
  (not !zero) && !sum = tar_num image (off + 148) 8

(* At most n bytes of a NUL-terminated field, appended without passing path_max - 1. *)
let append path image off n =
  let field = String.sub image off n in
  let field = match String.index_opt field '\000' with Some e -> String.sub field 0 e | None -> field in
  let joined = path ^ field in
  if String.length joined > path_max - 1 then String.sub joined 0 (path_max - 1) else joined

(* The regular files, in archive order: path, size and the offset of their data. *)
type entry = { path : string; size : int; data : int }

let tar_files image =
  let blocks = String.length image / block in
  let rec walk blk long_name files =
    let off = blk * block in
    if blk >= blocks || not (header_ok image off) then List.rev files
    else begin
      let size = tar_num image (off + 124) 12 in
      let next = blk + 1 + ((size + block - 1) / block) in
      match image.[off + 156] with
      | 'L' ->
          let last = min next blocks in
          let rec name n path =
            if n < last && String.length path < path_max - 1 then name (n + 1) (append path image (n * block) block)
            else path
          in
          if next > blocks then List.rev files else walk next (Some (name (blk + 1) "")) files
      | '0' | '\000' | '7' ->
          let path =
            match long_name with
            | Some path -> path
            | None ->
                let ustar = String.sub image (off + 257) 6 = "ustar\000" && image.[off + 345] <> '\000' in
                let prefix = if ustar then append (append "" image (off + 345) 155) "/" 0 1 else "" in
                append prefix image off 100
          in
          walk next None ({ path; size; data = off + block } :: files)
      | _ -> walk next None files
    end
  in
  walk 0 None []

(* Lists the image's files; returns the image and them, kept for HTTP. *)
let list_files () =
  match Sys.getenv_opt "MIRARI_BLOCK_0" with
  | None | Some "" -> say "files: none attached"; ("", [])
  | Some path -> (
      match open_in_bin path with
      | exception Sys_error why -> say "files: cannot open %s" why; ("", [])
      | channel ->
          let image = really_input_string channel (in_channel_length channel) in
          close_in channel;
          let files = tar_files image in
          List.iter (fun { path; size; _ } -> say "file %s (%d bytes)" path size) files;
          say "files: %d entries" (List.length files);
          (image, files))

(* The HTTP file server of src/net/http.c: the same requests, byte-identical
   responses. *)
let request_max = 1024

let request_done req =
  let rec from i =
    i < String.length req
    && ((req.[i] = '\n' && (req.[i - 1] = '\n' || (i > 1 && req.[i - 1] = '\r' && req.[i - 2] = '\n')))
       || from (i + 1))
  in
  from 1

(* The request line's method and path: "GET /x?q HTTP/1.1" gives "GET" and
   "x" (the leading '/' and any query dropped). None if there is no such line. *)
let request_line req =
  let len = String.length req in
  let rec scan i stop = if i < len && not (String.contains stop req.[i]) then scan (i + 1) stop else i in
  let m = scan 0 " \r\n" in
  if m = 0 || m >= len || req.[m] <> ' ' || m + 1 >= len || req.[m + 1] <> '/' then None
  else
    let p = scan (m + 2) " ?\r\n" in
    if p - (m + 2) >= path_max - 1 then None (* longer than any stored path *)
    else if scan p "\n" >= len then None (* the rest of the line must be there *)
    else Some (String.sub req 0 (min m 7), String.sub req (m + 2) (p - m - 2))

let respond ~version (image, files) req =
  let text status body = (status, "text/plain", body) in
  let status, content_type, body =
    match request_line req with
    | None -> text 400 "bad request\n"
    | Some (meth, _) when meth <> "GET" -> text 405 "method not allowed\n"
    | Some (_, "version") when version <> "" -> text 200 (version ^ "\n")
    | Some (_, path) -> (
        let path = if path = "" then "index.html" else path in
        (* GNU tar's "./x" is "x" too. *)
        let unprefixed p =
          if String.length p >= 2 && String.sub p 0 2 = "./" then String.sub p 2 (String.length p - 2) else p
        in
        let stored entry = unprefixed entry.path = path in
        match List.find_opt stored files with
        | Some { size; data; _ } when size <= 0x7fffffff && data + size <= String.length image ->
            let html = String.length path >= 5 && String.ends_with ~suffix:".html" path in
            (200, (if html then "text/html" else "text/plain"), String.sub image data size)
        | _ -> text 404 "not found\n")
  in
  let status_line =
    match status with
    | 200 -> "HTTP/1.0 200 OK\r\n"
    | 404 -> "HTTP/1.0 404 Not Found\r\n"
    | 405 -> "HTTP/1.0 405 Method Not Allowed\r\nAllow: GET\r\n"
    | _ -> "HTTP/1.0 400 Bad Request\r\n"
  in
  Printf.sprintf "%sContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" status_line content_type
    (String.length body) body

(* Node, reached without a ppx. *)
let global name = Js.Unsafe.get Js.Unsafe.global name
let call f args : 'a = Js.Unsafe.fun_call f args
let meth o name args : 'a = Js.Unsafe.meth_call o name args
let callback f = Js.Unsafe.inject (Js.wrap_callback f)
let jstring s = Js.Unsafe.inject (Js.string s)
let now_ms () : float = meth (global "Date") "now" [||]
let net : Js.Unsafe.any = Js.Unsafe.js_expr "require('net')"
let on emitter event f = ignore (meth emitter "on" [| jstring event; callback f |])
let error_message error = Js.to_string (Js.Unsafe.get error "message")

(* Node bytes for an OCaml string, one byte per character both ways. *)
let to_buffer s =
  Js.Unsafe.inject (meth (global "Buffer") "from" [| Js.Unsafe.inject (Js.bytestring s); jstring "latin1" |])
let of_buffer chunk = Js.to_bytestring (meth chunk "toString" [| jstring "latin1" |])

let control_path = ref None

let finish status =
  Option.iter (fun path -> try Sys.remove path with Sys_error _ -> ()) !control_path;
  exit status

(* Returns true if the caller should go on running (stop ignored). *)
let stop_request knobs why =
  if knobs.ignore_stop then (say "ignoring stop request"; true)
  else (say "stopping (%s)" why; false)

(* The control socket: each "stop" line is a stop request, answered "ok" or
   "ignored"; anything else gets an error. *)
let control_listen knobs =
  match Sys.getenv_opt "MIRARI_CONTROL" with
  | None | Some "" -> ()
  | Some path ->
      (* A stale socket from a killed predecessor would make listen fail. *)
      (try Sys.remove path with Sys_error _ -> ());
      let client socket =
        let pending = Buffer.create 64 in
        let rec lines () =
          let text = Buffer.contents pending in
          match String.index_opt text '\n' with
          | None ->
              if String.length text >= 64 then begin
                ignore (meth socket "end" [| jstring "error: line too long\n" |]);
                Buffer.clear pending
              end
          | Some nl ->
              let line = String.sub text 0 nl in
              let line = if String.ends_with ~suffix:"\r" line then String.sub line 0 (nl - 1) else line in
              Buffer.clear pending;
              Buffer.add_string pending (String.sub text (nl + 1) (String.length text - nl - 1));
              if line = "stop" then begin
                if stop_request knobs "control" then ignore (meth socket "write" [| jstring "ignored\n" |])
                else ignore (meth socket "end" [| jstring "ok\n"; callback (fun () -> finish 0) |])
              end
              else ignore (meth socket "write" [| jstring "error: unknown command\n" |]);
              lines ()
        in
        let data chunk =
          Buffer.add_string pending (of_buffer chunk);
          lines ()
        in
        on socket "data" data;
        on socket "error" (fun _ -> ())
      in
      let server = meth net "createServer" [| callback client |] in
      let failed error = say "control: %s: %s" path (error_message error) in
      on server "error" failed;
      on server "listening" (fun () -> control_path := Some path);
      ignore (meth server "listen" [| jstring path |])

(* Serves the image on --ipv4 and --http-port; returns what stops serving
   (the stop-serving-after knob). Each connection: read the request (until a
   blank line, 1 KiB or the client's FIN), send the response, shut our side
   down and drop what the client still sends; 10 s without progress drops it. *)
let http_listen knobs archive =
  match knobs.ipv4 with
  | None -> say "http: no --ipv4, not serving"; fun () -> ()
  | Some (address, _) ->
      let host = String.concat "." (List.map string_of_int address) in
      let where = Printf.sprintf "%s:%d" host knobs.http_port in
      let open_sockets = ref [] in
      let connection socket =
        open_sockets := socket :: !open_sockets;
        let request = Buffer.create request_max and answered = ref false in
        let answer () =
          if not !answered then begin
            answered := true;
            let response = respond ~version:knobs.version archive (Buffer.contents request) in
            ignore (meth socket "end" [| to_buffer response |])
          end
        in
        let data chunk =
          let bytes = of_buffer chunk in
          let room = request_max - Buffer.length request in
          Buffer.add_string request (String.sub bytes 0 (min (String.length bytes) room));
          if Buffer.length request = request_max || request_done (Buffer.contents request) then answer ()
        in
        let forget () = open_sockets := List.filter (fun s -> s != socket) !open_sockets in
        ignore (meth socket "setTimeout" [| Js.Unsafe.inject 10000 |]);
        on socket "timeout" (fun () -> ignore (meth socket "destroy" [||]));
        on socket "data" data;
        on socket "end" answer;
        on socket "error" (fun _ -> ());
        on socket "close" forget
      in
      (* allowHalfOpen: a client's FIN ends its request, not our response. *)
      let options = Js.Unsafe.obj [| ("allowHalfOpen", Js.Unsafe.inject Js._true) |] in
      let server = meth net "createServer" [| Js.Unsafe.inject options; callback connection |] in
      let failed error = say "http: cannot listen on %s: %s" where (error_message error) in
      let serving = ref false in
      on server "error" failed;
      on server "listening" (fun () -> serving := true; say "http: serving on %s" where);
      let at = Js.Unsafe.obj [| ("host", jstring host); ("port", Js.Unsafe.inject knobs.http_port) |] in
      ignore (meth server "listen" [| Js.Unsafe.inject at |]);
      fun () ->
        if !serving then begin
          serving := false;
          ignore (meth server "close" [||]);
          List.iter (fun socket -> ignore (meth socket "destroy" [||])) !open_sockets;
          say "http: stopped serving"
        end

let flood_line =
  String.concat "" (List.init 4 (fun _ -> "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))

let () =
  let args = List.tl (Array.to_list Sys.argv) in
  say "boot args: %s" (String.concat " " args);
  let knobs = List.fold_left parse_word no_knobs args in
  let stop_serving = http_listen knobs (list_files ()) in
  control_listen knobs;
  let process = global "process" in
  on process "SIGTERM" (fun () -> if not (stop_request knobs "SIGTERM") then finish 0);
  (* Stay on the one-second grid, but skip beats that a stall made us miss
     instead of bursting. *)
  let beat = ref 0 in
  let rec heartbeat next () =
    incr beat;
    say "heartbeat %d" !beat;
    if knobs.exit_after > 0 && !beat = knobs.exit_after then (say "exiting with failure"; finish 3);
    if knobs.stop_serving_after > 0 && !beat = knobs.stop_serving_after then stop_serving ();
    let now = now_ms () in
    let next = if next +. 1000. <= now then now +. 1000. else next +. 1000. in
    ignore (call (global "setTimeout") [| callback (heartbeat next); Js.Unsafe.inject (next -. now) |])
  in
  let start = now_ms () +. 1000. in
  ignore (call (global "setTimeout") [| callback (heartbeat start); Js.Unsafe.inject 1000. |]);
  if knobs.flood then begin
    let seq = ref 0 in
    let rec flood () =
      incr seq;
      say "flood %d %s" !seq flood_line;
      ignore (call (global "setImmediate") [| callback flood |])
    in
    flood ()
  end
