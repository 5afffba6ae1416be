// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title A freely mintable ERC-20, for Anvil and tests only
/// @notice Anyone can mint: never deploy this on a real chain. Six decimals,
/// so that one token unit is one of the engine's micro-units.
contract TestToken is ERC20 {
    constructor() ERC20("Voltshare Test Euro", "vEUR") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
